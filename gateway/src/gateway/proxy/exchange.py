"""The streaming reverse proxy: a pure ASGI layer in front of FastAPI's routing.

Requests under an upstream's prefix never reach FastAPI: the body streams to the upstream
as the client sends it (counted against the size limit), and the response streams back
chunk by chunk, so server-sent events arrive as the upstream produces them.
"""

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping

import httpx
from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import IPNetwork
from gateway.ratelimit import RateLimiter, client_ip, is_trusted
from gateway.transport import UpstreamTransport
from gateway.upstreams import Upstream
from servicekit import REQUEST_ID_HEADER, current_request_id, problem_response

_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()
# RFC 9110 §7.6.1 plus the de-facto Proxy-* family. Host and the forwarding headers are
# set by the gateway itself; Expect was already answered by the gateway's own server.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
_SET_BY_GATEWAY = frozenset(
    {
        b"host",
        b"expect",
        _REQUEST_ID,
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)
# The gateway's server writes its own; two of each would be invalid.
_RESPONSE_SET_BY_GATEWAY = frozenset({b"date", b"server"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Responses up to this size are read whole before they are relayed (see `_relay_whole`).
_WHOLE_RESPONSE_BYTES = 64 * 1024
_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class _BodyTimeout(Exception):
    pass


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens = [
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    ]
    return frozenset(tokens)


def _end_to_end(
    headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    headers = list(headers)
    listed = _connection_tokens(headers)
    return [
        (lowered, value)
        for name, value in headers
        if (lowered := name.lower()) not in drop
        and lowered not in listed
        and not lowered.startswith(b"proxy-")
    ]


class ProxyMiddleware:
    """Forwards requests under an upstream's prefix; everything else goes to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        body_timeout: float,
        trusted_proxies: tuple[IPNetwork, ...],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            upstreams: Mapping[str, Upstream] = scope["state"]["upstreams"]
            path: str = scope["path"]
            for upstream in upstreams.values():
                if upstream.matches(path):
                    await self.forward(upstream, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def forward(self, upstream: Upstream, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        incoming: list[tuple[bytes, bytes]] = scope["headers"]
        peer = scope["client"][0] if scope.get("client") else None
        original: dict[bytes, bytes] = {}
        for name, value in incoming:
            if name in (
                b"content-length",
                b"x-forwarded-for",
                b"x-forwarded-proto",
                b"x-forwarded-host",
                b"host",
                b"transfer-encoding",
            ):
                original[name] = value

        if upstream.rate_limited:
            limiter: RateLimiter = scope["state"]["limiter"]
            forwarded_for = original.get(b"x-forwarded-for")
            key = client_ip(
                peer,
                forwarded_for.decode("latin-1") if forwarded_for else None,
                self.trusted_proxies,
            )
            decision = await limiter.hit(f"{upstream.name}:{key}")
            if not decision.allowed:
                await problem_response(
                    429,
                    "rate_limited",
                    "Too Many Requests",
                    f"More than {decision.limit} requests per minute to {upstream.prefix}.",
                    path,
                    headers={"Retry-After": str(decision.retry_after)},
                )(scope, receive, send)
                return

        declared = original.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._too_large(scope, receive, send)
            return

        headers = _end_to_end(incoming, _HOP_BY_HOP | _SET_BY_GATEWAY)
        headers += self._forwarding_headers(scope, peer, original)
        # One deadline for the whole body: a client trickling a byte at a time must not
        # hold a connection here, and one upstream, for longer than the body timeout.
        body_deadline = (
            asyncio.get_running_loop().time() + self.body_timeout
            if b"transfer-encoding" in original or declared not in (None, b"0")
            else None
        )
        try:
            first = await (
                receive() if body_deadline is None else self._receive(receive, body_deadline)
            )
            while first.get("more_body", False) and not first.get("body"):
                first = await self._receive(receive, body_deadline)
        except _BodyTimeout:
            await self._body_timed_out(scope, receive, send)
            return
        body: bytes | AsyncIterator[bytes]
        if first["type"] == "http.disconnect":
            return
        if first.get("more_body", False):
            body = self._stream_body(first, receive, body_deadline)
        else:
            whole: bytes = first.get("body", b"")
            body = whole
            if len(whole) > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return

        raw_path: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope["query_string"]
        target = raw_path + b"?" + query if query else raw_path
        method: str = scope["method"]
        if isinstance(body, bytes):
            if body and declared is None:
                headers.append((b"content-length", str(len(body)).encode()))
        elif declared is None:
            headers.append((b"transfer-encoding", b"chunked"))
        retry = upstream.retry_idempotent and method in _IDEMPOTENT and isinstance(body, bytes)
        try:
            response = await self._exchange(upstream, method, target, headers, body, retry)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)
            return
        except _ClientGone:
            return
        except _BodyTimeout:
            await self._body_timed_out(scope, receive, send)
            return
        except httpx.TimeoutException:
            logger.warning("upstream timed out", upstream=upstream.name)
            await problem_response(
                504,
                "upstream_timeout",
                "Upstream timed out",
                f"The {upstream.name} service did not answer within {upstream.timeout:g} s.",
                path,
            )(scope, receive, send)
            return
        except httpx.TransportError as exc:
            logger.warning("upstream unavailable", upstream=upstream.name, error=str(exc))
            await problem_response(
                502,
                "upstream_unavailable",
                "Upstream unavailable",
                f"The {upstream.name} service cannot be reached.",
                path,
            )(scope, receive, send)
            return
        status, raw_headers, stream = response
        if _small_length(raw_headers):
            await self._relay_whole(upstream, status, raw_headers, stream, scope, receive, send)
        else:
            await self._relay(upstream, status, raw_headers, stream, receive, send)

    async def _relay_whole(
        self,
        upstream: Upstream,
        status: int,
        raw_headers: list[tuple[bytes, bytes]],
        stream: httpx.AsyncByteStream,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """A small body of known length is read before the status line goes out, so an
        upstream dying mid-body is a clean 502/504 problem rather than a truncated 200."""
        try:
            content = b"".join([chunk async for chunk in stream])
        except httpx.TransportError as exc:
            logger.warning("upstream failed mid-response", upstream=upstream.name, error=str(exc))
            timed_out = isinstance(exc, httpx.TimeoutException)
            await problem_response(
                504 if timed_out else 502,
                "upstream_timeout" if timed_out else "upstream_unavailable",
                "Upstream timed out" if timed_out else "Upstream unavailable",
                f"The {upstream.name} service failed while answering.",
                scope["path"],
            )(scope, receive, send)
            return
        finally:
            await stream.aclose()
        headers = _end_to_end(raw_headers, _HOP_BY_HOP | _RESPONSE_SET_BY_GATEWAY)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})

    async def _exchange(
        self,
        upstream: Upstream,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
        retry: bool,
    ) -> tuple[int, list[tuple[bytes, bytes]], httpx.AsyncByteStream]:
        for attempt in (1, 2):
            try:
                return await self._open(upstream, method, target, headers, body)
            except _RETRYABLE:
                if not retry or attempt == 2:
                    raise
                logger.info("retrying upstream after a connection error", upstream=upstream.name)
        raise AssertionError("unreachable")

    @staticmethod
    async def _open(
        upstream: Upstream,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
    ) -> tuple[int, list[tuple[bytes, bytes]], httpx.AsyncByteStream]:
        transport = upstream.transport
        if isinstance(transport, UpstreamTransport):
            # Straight to the pool: building httpx's Request and URL objects would cost more
            # than the rest of the proxying together.
            return await transport.exchange(
                upstream.origin,
                method,
                target,
                [(b"host", upstream.host), *headers],
                body,
                upstream.timeouts,
            )
        request = httpx.Request(
            method,
            upstream.base_url.copy_with(raw_path=target),
            headers=headers,
            content=body,
            extensions={"timeout": upstream.timeouts},
        )
        response = await transport.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return response.status_code, response.headers.raw, response.stream

    async def _relay(
        self,
        upstream: Upstream,
        status: int,
        raw_headers: list[tuple[bytes, bytes]],
        stream: httpx.AsyncByteStream,
        receive: Receive,
        send: Send,
    ) -> None:
        headers = _end_to_end(raw_headers, _HOP_BY_HOP | _RESPONSE_SET_BY_GATEWAY)
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            if any(name == b"content-length" for name, _ in headers):
                await self._pump_sized(stream, send)
            else:
                await self._pump_until_disconnect(stream, receive, send)
        except httpx.TransportError as exc:
            # The status line is already sent: all that is left is to cut the response short,
            # so the client sees a truncated body rather than a clean end.
            logger.warning("upstream failed mid-response", upstream=upstream.name, error=str(exc))
            raise
        finally:
            await stream.aclose()

    @staticmethod
    async def _pump(stream: httpx.AsyncByteStream, send: Send) -> None:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _pump_sized(stream: httpx.AsyncByteStream, send: Send) -> None:
        """A body of known length: each chunk is held until the next one shows up, so the
        last (usually the only) one goes out together with the end of the response."""
        held: bytes | None = None
        async for chunk in stream:
            if held is not None:
                await send({"type": "http.response.body", "body": held, "more_body": True})
            held = chunk
        await send({"type": "http.response.body", "body": held or b"", "more_body": False})

    async def _pump_until_disconnect(
        self, stream: httpx.AsyncByteStream, receive: Receive, send: Send
    ) -> None:
        """A stream of unknown length (SSE) ends early when its client leaves, so the
        upstream (and OpenAI behind it) stops working for nobody."""
        pump = asyncio.ensure_future(self._pump(stream, send))
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watcher):
                if not task.done():
                    task.cancel()
        if pump.done() and not pump.cancelled():
            pump.result()
        else:
            await asyncio.gather(pump, return_exceptions=True)

    async def _stream_body(
        self, first: Message, receive: Receive, deadline: float | None
    ) -> AsyncIterator[bytes]:
        received = len(first.get("body", b""))
        if received > self.max_body_bytes:
            raise _BodyTooLarge
        yield first.get("body", b"")
        more = True
        while more:
            message = await self._receive(receive, deadline)
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                raise _BodyTooLarge
            more = message.get("more_body", False)
            yield chunk

    def _forwarding_headers(
        self, scope: Scope, peer: str | None, original: Mapping[bytes, bytes]
    ) -> list[tuple[bytes, bytes]]:
        trusted = (
            bool(self.trusted_proxies)
            and peer is not None
            and is_trusted(peer, self.trusted_proxies)
        )
        forwarded_for = peer.encode() if peer else b"unknown"
        if trusted and (chain := original.get(b"x-forwarded-for")):
            forwarded_for = chain + b", " + forwarded_for
        proto = scope.get("scheme", "http").encode()
        host = original.get(b"host", b"")
        if trusted:
            proto = original.get(b"x-forwarded-proto", proto)
            host = original.get(b"x-forwarded-host", host)
        headers = [
            (b"x-forwarded-for", forwarded_for),
            (b"x-forwarded-proto", proto),
            (_REQUEST_ID, (current_request_id() or "").encode()),
        ]
        if host:
            headers.append((b"x-forwarded-host", host))
        return headers

    @staticmethod
    async def _receive(receive: Receive, deadline: float | None) -> Message:
        """The next part of the body; a client whose body is not complete by the deadline
        is cut off, so slow senders cannot hold connections here and upstream forever."""
        try:
            async with asyncio.timeout_at(deadline):
                return await receive()
        except TimeoutError:
            raise _BodyTimeout from None

    async def _body_timed_out(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            408,
            "request_timeout",
            "Request Timeout",
            f"The request body did not arrive within {self.body_timeout:g} s.",
            scope["path"],
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413,
            "payload_too_large",
            "Payload Too Large",
            f"The request body exceeds {self.max_body_bytes} bytes.",
            scope["path"],
        )
        await response(scope, receive, send)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _small_length(raw_headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in raw_headers:
        if name.lower() == b"content-length":
            return value.isdigit() and int(value) <= _WHOLE_RESPONSE_BYTES
    return False
