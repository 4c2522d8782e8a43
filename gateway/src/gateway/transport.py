"""The gateway's one way to an upstream: `Connector.exchange`, implemented by servicekit's
lean HTTP/1.1 connection pool (`servicekit.pool`), with `HttpxTransport` putting httpx's
client API over it.
"""

from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Protocol

import httpx

from servicekit.pool import Origin, UpstreamResponse, default_port

# The pool's types are the connector's interface too.
__all__ = ["Connector", "HttpxTransport", "Origin", "UpstreamResponse", "default_port"]


class Connector(Protocol):
    """Sends one request to an upstream; the proxy and every `httpx.AsyncClient` of the
    gateway go through this, and tests replace it (and only it) with a stand-in."""

    async def exchange(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes],
        timeouts: Mapping[str, float | None],
    ) -> UpstreamResponse:
        """The response's status, headers and body stream; closing the stream ends the
        exchange. Failures are httpx's exceptions: `ConnectError`, `TimeoutException`…"""
        ...

    async def aclose(self) -> None: ...


class HttpxTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface over a `Connector`, for the gateway's health checks and
    OpenAPI fetches."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        body: bytes | AsyncIterable[bytes]
        try:
            body = request.content
        except httpx.RequestNotRead:
            assert isinstance(request.stream, httpx.AsyncByteStream)
            body = request.stream
        response = await self.connector.exchange(
            (url.host, url.port or default_port(url.scheme)),
            request.method,
            url.raw_path,
            request.headers.raw,
            body,
            request.extensions.get("timeout", {}),
        )
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=response.stream,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self.connector.aclose()
