"""The gateway in process: its lifespan run by hand, upstreams replaced by `MockTransport`s."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import httpx
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Message, Receive

from gateway.config import Settings
from gateway.main import create_app

Handler = Callable[[httpx.Request], Any]


class Recorder:
    """An upstream stand-in: records every request that reached it, answers via `handler`."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.handler = handler or (lambda request: httpx.Response(200, json={"ok": True}))

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        result = self.handler(request)
        if hasattr(result, "__await__"):
            result = await result
        assert isinstance(result, httpx.Response)
        return result

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


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
    app = create_app(config, {name: rec.transport for name, rec in upstreams.items()})
    async with (
        LifespanManager(app) as manager,
        GatewayClient(manager.app, upstreams["audits"], upstreams["llm"]) as client,
    ):
        yield client
