"""Memory a burst of connections freed, given back to the system once none is open.

glibc keeps the heap pages that many connections' buffers freed; where other allocations
still sit above them it cannot shrink the heap, so they stay resident after the burst.
`malloc_trim` returns every whole free page (see `make bench`, row `memory-streams`). It is
done once the last connection has closed, a second later and at most once per second, so a
busy gateway never pays for it.
"""

import asyncio
import ctypes
from collections.abc import Callable, Collection

# Seconds between the last connection closing and the trim; also the shortest interval.
IDLE_TRIM_DELAY_S = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None on a C library without it (musl, macOS)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class IdleTrim:
    """Trims the heap once no connection of `connections` is open any more."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._pending: asyncio.TimerHandle | None = None

    def connection_closed(
        self, loop: asyncio.AbstractEventLoop, connections: Collection[object]
    ) -> None:
        if self._trim is None or connections or self._pending is not None:
            return
        self._pending = loop.call_later(IDLE_TRIM_DELAY_S, self._run, connections)

    def _run(self, connections: Collection[object]) -> None:
        self._pending = None
        if not connections and self._trim is not None:
            self._trim(0)


idle_trim = IdleTrim()
