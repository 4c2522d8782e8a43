"""The lean upstream transport against a real HTTP server (uvicorn, in this event loop)."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from gateway.transport import HttpxTransport
from servicekit.pool import ConnectionPool


class Upstream:
    """Records client ports (one per TCP connection) and serves a few behaviours by path."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.ports.append(scope["client"][1])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        path = scope["path"]
        if path == "/stream":
            await send(_start(200, [(b"content-type", b"text/event-stream")]))
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"data: 2\n\n"})
        elif path == "/slow":
            await asyncio.sleep(2)
            await send(_start(200, []))
            await send({"type": "http.response.body", "body": b"late"})
        elif path == "/empty":
            await send(_start(204, []))
            await send({"type": "http.response.body", "body": b""})
        else:
            await send(_start(200, [(b"content-length", b"%d" % len(body))]))
            await send({"type": "http.response.body", "body": body})


def _start(status: int, headers: list[tuple[bytes, bytes]]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": headers}


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    app = Upstream()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield app, f"http://127.0.0.1:{port}"
    app.release.set()
    server.should_exit = True
    await task
    sock.close()


@pytest.fixture
async def client(upstream: tuple[Upstream, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=upstream[1], transport=HttpxTransport(ConnectionPool()), timeout=5
    ) as client:
        yield client


async def test_connections_are_kept_alive_and_reused(
    upstream: tuple[Upstream, str], client: httpx.AsyncClient
) -> None:
    app, _ = upstream
    for index in range(5):
        response = await client.post("/echo", content=b"hello %d" % index)
        assert response.content == b"hello %d" % index
    assert len(set(app.ports)) == 1


async def test_streamed_request_bodies_are_sent_chunked(
    upstream: tuple[Upstream, str], client: httpx.AsyncClient
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"a" * 70_000, b"", b"b" * 10):
            yield part

    response = await client.post("/echo", content=body())
    assert response.content == b"a" * 70_000 + b"b" * 10


async def test_responses_stream_chunk_by_chunk(
    upstream: tuple[Upstream, str], client: httpx.AsyncClient
) -> None:
    app, _ = upstream
    async with client.stream("GET", "/stream") as response:
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"data: 1\n\n"
        app.release.set()
        assert [chunk async for chunk in chunks] == [b"data: 2\n\n"]
    assert (await client.get("/echo")).status_code == 200


async def test_head_and_no_content_responses_end_without_a_body(
    upstream: tuple[Upstream, str], client: httpx.AsyncClient
) -> None:
    head = await client.head("/echo")
    assert head.status_code == 200
    assert head.content == b""
    empty = await client.get("/empty")
    assert empty.status_code == 204
    assert (await client.post("/echo", content=b"after")).content == b"after"


async def test_timeouts_and_refusals_are_httpx_exceptions(
    upstream: tuple[Upstream, str], client: httpx.AsyncClient
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await client.get("/slow", timeout=0.2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await client.get(f"http://127.0.0.1:{closed_port}/")


async def test_a_connection_dropped_mid_response_is_an_error_not_a_clean_end() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with httpx.AsyncClient(transport=HttpxTransport(ConnectionPool())) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{port}/")
    server.close()
    with contextlib.suppress(Exception):
        await server.wait_closed()
