"""uvicorn's httptools protocol with the writes of a request cycle coalesced.

uvicorn writes every ASGI message to the socket as it comes: a response's head, each body
chunk and the chunked terminator are separate `write()` calls, so the peer receives (and
wakes up for) each one apart, and every write pays the loopback's or the NIC's per-packet
work. `CycleTransport` gathers what a cycle writes within one pass of the event loop and
sends it as one write at the end of that pass: a plain response's head and body, or an
event stream's head and first events, leave together; a chunk that arrives later still goes
out in the pass it arrives in (see `make bench`, rows `llm-ttfc` and `llm-sdk-stream`).

Serve a service with `uvicorn --http servicekit.server:HttpProtocol` (the gateway's own
protocol builds on this one).
"""

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A pass's writes beyond this are sent at once: coalescing is for small pieces, and a large
# body must meet the transport's flow control without delay.
_MAX_HELD_BYTES = 64 * 1024


class CycleTransport(asyncio.Transport):
    """The connection's transport as uvicorn's request cycles see it (they write, ask whether
    it is closing and close it): writes are held until the end of the loop's pass, and
    closing sends what is held first, then calls `close`."""

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        close: Callable[[], None],
    ) -> None:
        super().__init__()
        self.transport = transport
        self._loop = loop
        self._close = close
        self._held: list[bytes | bytearray | memoryview] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > _MAX_HELD_BYTES:
            self.flush()

    def flush(self) -> None:
        """Send what is held, in one write."""
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._close()

    def detach(self) -> None:
        """The connection is gone: nothing held is sent, and a cycle still running may only
        close the transport."""
        self._held.clear()
        self._held_bytes = 0
        self._close = self.transport.close


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request cycles write through a `CycleTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.cycle_transport = CycleTransport(transport, self.loop, self.close_after_response)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.cycle_transport.detach()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # a WebSocket: uvicorn hands the connection to its WebSocket protocol
        self.cycle.transport = self.cycle_transport

    def on_response_complete(self) -> None:
        # The response's last bytes leave now, not at the end of the loop's pass: what the
        # cycle still does after its last message (the access line, metrics) then runs
        # while the client already reads the answer.
        self.cycle_transport.flush()
        super().on_response_complete()

    def shutdown(self) -> None:
        self.cycle_transport.flush()
        super().shutdown()

    def close_after_response(self) -> None:
        """A request cycle closes the connection (its response was the last, or it failed)."""
        self.transport.close()
