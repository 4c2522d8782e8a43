"""The idle trim gives glibc's free heap pages back once no connection is open."""

import asyncio

import psutil

from gateway.memory import IDLE_TRIM_DELAY_S, IdleTrim

CHUNK = 4096
CHUNKS = 20_000


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _fragmented_heap() -> list[bytes]:
    """Frees about 80 MB of heap pages that the survivors above them keep from the system."""
    blocks = [bytes(CHUNK) for _ in range(CHUNKS)]
    survivors = blocks[CHUNKS - 1 :]
    del blocks
    return survivors


async def test_the_heap_is_trimmed_once_the_last_connection_closed() -> None:
    survivors = _fragmented_heap()
    before = _rss_mb()
    trim = IdleTrim()
    loop = asyncio.get_running_loop()
    trim.connection_closed(loop, {object()})
    await asyncio.sleep(IDLE_TRIM_DELAY_S + 0.2)
    still_open = _rss_mb()
    trim.connection_closed(loop, set())
    await asyncio.sleep(IDLE_TRIM_DELAY_S + 0.2)
    assert before - still_open < 10
    assert before - _rss_mb() > 40
    assert survivors
