"""The upstream hop's transport: httpx2's client API (which the SDK client and `UpstreamClient`
use) over servicekit's lean connection pool instead of httpcore2's, whose per-request
bookkeeping was the largest share of this service's CPU per call (`make bench`, rows
`llm-sdk` and `llm-embeddings`).

The pool raises httpx's exceptions; they are raised again as httpx2's of the same name, so
the retry policy and the error mapping (`llm_service.chat.retry`, `upstream`) stay as they
are. Proxies from the environment are still honoured: httpx2 mounts its own transport for
a proxied URL, this one serves the rest.
"""

from collections.abc import AsyncIterator

import httpx
import httpx2

from servicekit.pool import ConnectionPool, default_port


def _as_httpx2(exc: httpx.TransportError) -> httpx2.TransportError:
    """httpx2 has a class of every name httpx has; `TransportError` for any other."""
    cls: type[httpx2.TransportError] = getattr(httpx2, type(exc).__name__, httpx2.TransportError)
    return cls(str(exc))


class _Body(httpx2.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except httpx.TransportError as exc:
            raise _as_httpx2(exc) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


class PooledTransport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connections to the upstream, over TLS for `https://` (the pool's
    limits are the SDK's own defaults: 1,000 connections, 100 kept alive)."""

    def __init__(self) -> None:
        self._pool = ConnectionPool(ssl_context=httpx2.create_ssl_context())
        self._plain = ConnectionPool()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        pool = self._pool if url.scheme == "https" else self._plain
        try:
            response = await pool.exchange(
                (url.host, url.port or default_port(url.scheme)),
                request.method,
                url.raw_path,
                request.headers.raw,
                await request.aread(),
                request.extensions.get("timeout", {}),
            )
        except httpx.TransportError as exc:
            raise _as_httpx2(exc) from exc
        return httpx2.Response(
            response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
        await self._plain.aclose()
