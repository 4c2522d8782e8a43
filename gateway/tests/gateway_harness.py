"""The gateway in process: its lifespan run by hand, each upstream's `Connector` (the one
way the gateway reaches an upstream, for the proxy and its httpx clients alike) replaced
by a `Recorder`."""

import asyncio
import socket
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import httpx
import uvicorn
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Message, Receive

from gateway.config import Settings
from gateway.main import create_app
from gateway.transport import Origin, UpstreamResponse

Handler = Callable[[httpx.Request], Any]


class Recorder:
    """An upstream stand-in at the `Connector` interface: records every request that reached
    it (the body read as the real pool reads it, so the gateway's size limit and client
    disconnects surface from the same place), answers via `handler`, which may also raise
    the pool's httpx exceptions."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.handler = handler or (lambda request: httpx.Response(200, json={"ok": True}))

    async def exchange(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes],
        timeouts: Mapping[str, float | None],
    ) -> UpstreamResponse:
        content = body if isinstance(body, bytes) else b"".join([chunk async for chunk in body])
        url = httpx.URL(scheme="http", host=origin[0], port=origin[1], raw_path=target)
        request = httpx.Request(method, url, headers=list(headers), content=content)
        self.requests.append(request)
        result = self.handler(request)
        if hasattr(result, "__await__"):
            result = await result
        assert isinstance(result, httpx.Response)
        assert isinstance(result.stream, httpx.AsyncByteStream)
        return UpstreamResponse(result.status_code, result.headers.raw, result.stream)

    async def aclose(self) -> None:
        return None


class GatewayClient(httpx.AsyncClient):
    """An httpx client on the gateway's ASGI app, plus requests with an exact raw path."""

    def __init__(self, app: ASGIApp, audits: Recorder, llm: Recorder) -> None:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4711))
        super().__init__(transport=transport, base_url="http://gateway.test")
        self.app = app
        self.audits = audits
        self.llm = llm

    async def raw(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        receive: Receive | None = None,
        watch: Callable[[Message], None] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """The request exactly as given: httpx normalises `.` and `..` segments, and cannot
        stall in the middle of a body. `watch` sees each response message as it is sent
        (httpx's ASGI transport hands over a response only once it is complete)."""
        path, _, query = raw_path.partition(b"?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"gateway.test"), *(headers or [])],
            "client": ("203.0.113.7", 4711),
            "server": ("gateway.test", 80),
        }
        messages: list[Message] = []

        async def no_body() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            messages.append(message)
            if watch is not None:
                watch(message)

        await self.app(scope, receive or no_body, send)
        start = messages[0]
        response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
        body = b"".join(m.get("body", b"") for m in messages[1:])
        return start["status"], response_headers, body


@asynccontextmanager
async def running_gateway(
    audits: Recorder | None = None, llm: Recorder | None = None, **settings: Any
) -> AsyncIterator[GatewayClient]:
    """The gateway with its lifespan running; `audits` and `llm` stand in for the services."""
    upstreams = {"audits": audits or Recorder(), "llm": llm or Recorder()}
    config = Settings(
        audits_service_url="http://audits.internal:8001",
        llm_service_url="http://llm.internal:8002",
        **settings,
    )
    app = create_app(config, upstreams)
    async with (
        LifespanManager(app) as manager,
        GatewayClient(manager.app, upstreams["audits"], upstreams["llm"]) as client,
    ):
        yield client


@asynccontextmanager
async def loopback_server(app: ASGIApp, **config: Any) -> AsyncIterator[int]:
    """`app` under uvicorn on a free 127.0.0.1 port, in this event loop; yields the port.
    `config` goes to `uvicorn.Config` (`ssl_certfile`, `ssl_keyfile` for TLS)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **config))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "the loopback server did not start"
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def gateway_client(config: Settings, **connectors: Recorder) -> AsyncIterator[GatewayClient]:
    """The gateway on `config`, its upstreams reached through the production pool except
    those given in `connectors`."""
    app = create_app(config, connectors)
    async with (
        LifespanManager(app) as manager,
        GatewayClient(
            manager.app, connectors.get("audits", Recorder()), connectors.get("llm", Recorder())
        ) as client,
    ):
        yield client


async def scrape(port: int) -> str:
    """The gateway's metrics, from its metrics listener on `port`."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    return response.text
