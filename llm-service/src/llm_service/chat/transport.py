"""The upstream hop: our requests straight to servicekit's lean connection pool, or through
httpx2's client where the environment names a proxy for the upstream (`HTTPS_PROXY`,
`HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`), which httpx2 speaks and the pool does not.

The client layer's request and response models cost more CPU per call than the rest of
the hop (`make bench`, rows `llm-ttfc` and `llm-sdk`), and a pass-through needs none of
them. Both hops raise httpx2's exceptions, so the retry policy and the error mapping
(`llm_service.chat.retry`, `upstream`) see one set.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import httpx
import httpx2

from servicekit.pool import ConnectionPool, RawHeaders, default_port


def _as_httpx2(exc: httpx.TransportError) -> httpx2.TransportError:
    """httpx2 has a class of every name httpx has; `TransportError` for any other."""
    cls: type[httpx2.TransportError] = getattr(httpx2, type(exc).__name__, httpx2.TransportError)
    return cls(str(exc))


class Reply:
    """An upstream response whose head has arrived: its status, headers and body."""

    __slots__ = ("_close", "chunks", "raw_headers", "status")

    def __init__(
        self,
        status: int,
        raw_headers: RawHeaders,
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.status = status
        self.raw_headers = raw_headers
        self.chunks = chunks
        self._close = close

    @property
    def headers(self) -> httpx2.Headers:
        return httpx2.Headers(self.raw_headers)

    async def read(self) -> bytes:
        """The whole body; the reply is closed afterwards."""
        try:
            return b"".join([chunk async for chunk in self.chunks])
        finally:
            await self._close()

    async def aclose(self) -> None:
        await self._close()


class Hop(Protocol):
    async def send(self, method: str, path: str, body: bytes | None, headers: RawHeaders) -> Reply:
        """`method` `path` (under the base URL) with `body`, and `headers` added to the
        hop's own; returns once the response's head has arrived."""
        ...

    async def aclose(self) -> None: ...


class PoolHop:
    """HTTP/1.1 keep-alive connections to the upstream, over TLS for `https://` (the pool's
    limits are the SDK's own defaults: 1,000 connections, 100 kept alive). Bodies are asked
    for uncompressed: decoding them would cost this service CPU on every call."""

    def __init__(self, base_url: httpx2.URL, headers: RawHeaders, timeout: float) -> None:
        https = base_url.scheme == "https"
        self._pool = ConnectionPool(ssl_context=httpx2.create_ssl_context() if https else None)
        self._origin = (base_url.host, base_url.port or default_port(base_url.scheme))
        self._prefix = base_url.raw_path.rstrip(b"/")
        self._headers: RawHeaders = [
            (b"host", base_url.netloc),
            (b"accept-encoding", b"identity"),
            (b"connection", b"keep-alive"),
            *headers,
        ]
        self._timeouts = dict.fromkeys(("connect", "read", "write", "pool"), timeout)

    async def send(self, method: str, path: str, body: bytes | None, headers: RawHeaders) -> Reply:
        head = self._headers + headers
        if body is not None:
            head.append((b"content-length", b"%d" % len(body)))
        try:
            response = await self._pool.exchange(
                self._origin,
                method,
                self._prefix + path.encode(),
                head,
                body or b"",
                self._timeouts,
            )
        except httpx.TransportError as exc:
            raise _as_httpx2(exc) from exc
        return Reply(
            response.status, response.headers, _chunks(response.stream), response.stream.aclose
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


async def _chunks(stream: httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except httpx.TransportError as exc:
        raise _as_httpx2(exc) from exc


class ClientHop:
    """httpx2's client, with the proxy its environment names for the upstream."""

    def __init__(self, http: httpx2.AsyncClient, base_url: httpx2.URL, headers: RawHeaders):
        self._http = http
        self._base_url = str(base_url).rstrip("/")
        self._headers = headers

    async def send(self, method: str, path: str, body: bytes | None, headers: RawHeaders) -> Reply:
        request = self._http.build_request(
            method, self._base_url + path, content=body, headers=self._headers + headers
        )
        response = await self._http.send(request, stream=True)
        return Reply(
            response.status_code, response.headers.raw, response.aiter_bytes(), response.aclose
        )

    async def aclose(self) -> None:
        """Nothing of its own: the client is the SDK's, closed with it."""


def upstream_hop(
    http: httpx2.AsyncClient, base_url: str, headers: RawHeaders, timeout: float
) -> Hop:
    """The pool, unless `http` (made with `trust_env`, as by default) sends `base_url`
    through a proxy."""
    url = httpx2.URL(base_url)
    if http._transport_for_url(url) is not http._transport:
        return ClientHop(http, url, headers)
    return PoolHop(url, headers, timeout)
