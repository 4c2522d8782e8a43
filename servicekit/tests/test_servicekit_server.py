import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.types import Receive, Scope, Send

from servicekit.server import HttpProtocol

_LARGE = 200 * 1024
# Set by the client of `/then-work` once it has read the whole answer.
_ANSWER_READ = threading.Event()


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """`/stream`: an event, a pause, a last event; `/large`: one body of `_LARGE` bytes."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/then-work":
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
        # Work after the last message, in the same pass of the event loop (an access line,
        # metrics): the client reads the answer meanwhile, or not until this gives up.
        _ANSWER_READ.wait(5)
        return
    if scope["path"] == "/large":
        headers = [(b"content-length", str(_LARGE).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * _LARGE})
        return
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await asyncio.sleep(0.3)
    await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})


@asynccontextmanager
async def _server() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_app, http=HttpProtocol, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


def _exchange(port: int, request: bytes, until: bytes) -> tuple[bytes, bytes]:
    """What the first read returns, and everything up to `until` (or the connection's end)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(request)
        first = received = client.recv(1 << 20)
        while not received.endswith(until):
            more = client.recv(1 << 20)
            if not more:
                break
            received += more
    return first, received


async def test_a_streams_head_and_first_event_leave_in_one_write_and_later_events_unheld() -> None:
    async with _server() as port:
        request = b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\n"
        loop = asyncio.get_running_loop()
        started = loop.time()
        first, whole = await asyncio.to_thread(_exchange, port, request, b"0\r\n\r\n")
        elapsed = loop.time() - started

    # A client blocked in its read wakes once, for head and event together.
    assert first.startswith(b"HTTP/1.1 200 ")
    assert first.endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert whole == first + b"9\r\ndata: 2\n\n\r\n0\r\n\r\n"
    assert elapsed >= 0.3


async def test_a_large_body_is_sent_whole_before_a_closing_connection_closes() -> None:
    async with _server() as port:
        request = b"GET /large HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
        _, whole = await asyncio.to_thread(_exchange, port, request, b"never")

    head, _, body = whole.partition(b"\r\n\r\n")
    assert b"connection: close" in head
    assert body == b"x" * _LARGE


async def test_a_complete_response_leaves_before_the_cycle_s_work_after_it() -> None:
    _ANSWER_READ.clear()

    def read_answer(port: int) -> tuple[bytes, float]:
        started = time.monotonic()
        request = b"GET /then-work HTTP/1.1\r\nhost: test\r\n\r\n"
        _, whole = _exchange(port, request, b"\r\n\r\nok")
        elapsed = time.monotonic() - started
        _ANSWER_READ.set()
        return whole, elapsed

    async with _server() as port:
        whole, elapsed = await asyncio.to_thread(read_answer, port)

    assert whole.startswith(b"HTTP/1.1 200 ")
    assert whole.endswith(b"\r\n\r\nok")
    assert elapsed < 4
