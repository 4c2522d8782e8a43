"""The gateway in process: its lifespan run by hand, each upstream's `Connector` (the one
way the gateway reaches an upstream, for the proxy and its httpx clients alike) replaced
by a `Recorder`."""

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import httpx
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
    ) -> tuple[int, dict[str, str], bytes]:
        """The request exactly as given: httpx normalises `.` and `..` segments, and cannot
        stall in the middle of a body."""
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
