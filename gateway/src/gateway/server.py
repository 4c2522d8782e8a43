"""The gateway's HTTP/1.1 server protocol: servicekit's (uvicorn's httptools protocol, its
writes coalesced) with the connection limits a public edge needs, enforced before a request
reaches the app.

Serve the gateway with `uvicorn --http gateway.server:EdgeHttpProtocol` (`make run`, the image
and the manifests do). On top of uvicorn's own behaviour:

- a connection beyond `MAX_CONNECTIONS` is answered 503 and closed at once;
- a header block that grows past `MAX_URL_BYTES + MAX_HEADER_BYTES` before it is complete is
  answered 431 and the connection closed (the parser never buffers more than that plus one read);
  a complete block is judged against each limit by `gateway.edge.EdgeGuardMiddleware`, whose
  414 or 431 is an ordinary answer in the request's context;
- a header block not complete within `CLIENT_HEADER_TIMEOUT` of its first byte, or of the
  connection's start, is answered 408 (or just closed, when nothing arrived) and closed;
- a request that is not valid HTTP/1.1, that has no Host or two, a `Transfer-Encoding` other
  than `chunked`, an `Upgrade` together with a body, or the `CONNECT` method is answered 400
  and closed: nothing after it on the connection is read as a request;
- a response that starts before its request's body has all arrived (a 413, a 408, any early
  answer) carries `Connection: close`, and so does the last response a connection may carry
  (`KEEPALIVE_REQUESTS`, `KEEPALIVE_TIME`); a response is never cut for either;
- closing with input still unread is a lingering close, as nginx's `lingering_close`: the
  answer goes out, then the write side is shut, and what the client still sends is read and
  discarded (never parsed) until it closes, for at most `LINGERING_TIME` seconds and
  `LINGERING_MAX_BYTES` bytes, and at most `LINGERING_TIMEOUT` seconds without input. Closing
  at once would make the kernel reset the connection, and the client lose the answer.

Every answer of its own is a problem document (`application/problem+json`) with a fresh
request ID.
"""

import asyncio
from functools import cache

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from gateway.config import Settings
from gateway.memory import idle_trim
from servicekit import REQUEST_ID_HEADER
from servicekit.context import new_request_id
from servicekit.errors import (
    BadRequest,
    MethodNotAllowed,
    RequestHeadersTooLarge,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
)
from servicekit.problems import PROBLEM_MEDIA_TYPE, problem_body
from servicekit.server import HttpProtocol


@cache
def _settings() -> Settings:
    return Settings()


def framing_refusal(
    method: str, headers: list[tuple[bytes, bytes]], http_11: bool
) -> ServiceError | None:
    """Why a parsed header block is refused, or None: the framing rules of RFC 9112 the parser
    itself is lenient about."""
    hosts = sum(1 for name, _ in headers if name == b"host")
    if hosts > 1 or (http_11 and hosts == 0):
        return BadRequest("An HTTP/1.1 request needs exactly one Host header.")
    codings = [value for name, value in headers if name == b"transfer-encoding"]
    if codings and (len(codings) > 1 or codings[0].strip().lower() != b"chunked"):
        return BadRequest("The only Transfer-Encoding accepted is a single `chunked`.")
    if method == "CONNECT":
        return MethodNotAllowed("The gateway is not a forward proxy.")
    has_body = codings or any(
        name == b"content-length" and value.strip() != b"0" for name, value in headers
    )
    if has_body and any(name == b"upgrade" for name, _ in headers):
        return BadRequest("Upgrade is not supported on a request with a body.")
    return None


def problem_bytes(refusal: ServiceError) -> bytes:
    request_id = new_request_id()
    body = problem_body(refusal.status, refusal.code, refusal.title, refusal.detail)
    body["request_id"] = request_id
    content = orjson.dumps(body)
    return b"".join(
        [
            STATUS_LINE[refusal.status],
            b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n",
            b"content-length: " + str(len(content)).encode() + b"\r\n",
            REQUEST_ID_HEADER.lower().encode() + b": " + request_id.encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            content,
        ]
    )


class EdgeHttpProtocol(HttpProtocol):
    """servicekit's protocol (uvicorn's httptools one, its writes coalesced) with
    connection-level limits (see the module's doc)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.limits = limits = _settings()
        self.max_header_block = limits.max_url_bytes + limits.max_header_bytes
        self.opened = self.loop.time()
        self.requests = 0
        self.keep_alive_wanted = False
        self.draining = False
        self.header_bytes = 0
        self.awaiting_headers = True
        self.refused = False
        self.pending_refusal: ServiceError | None = None
        self.header_deadline: asyncio.TimerHandle | None = None
        self.lingering_until: float | None = None
        self.lingering_input = 0.0
        self.lingering_bytes = 0
        self.lingering_check: asyncio.TimerHandle | None = None
        if len(self.connections) > limits.max_connections:
            self.refuse(
                ServiceUnavailable(
                    f"More than {limits.max_connections} connections are open; retry later."
                ),
                linger=False,
            )
            return
        self.arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm_header_deadline()
        if self.lingering_check is not None:
            self.lingering_check.cancel()
            self.lingering_check = None
        super().connection_lost(exc)
        # A connection's objects point at each other (protocol, request cycle, transport
        # wrapper, bound methods). Cut those links now, so they are freed by reference
        # counting as the connection ends instead of waiting for a full collection, which the
        # raised GC thresholds (`servicekit.runtime`) make rare. (`HttpProtocol` detaches the
        # cycle transport.)
        self.cycle = None  # type: ignore[assignment]
        idle_trim.connection_closed(self.loop, self.connections)

    def data_received(self, data: bytes) -> None:
        if self.lingering_until is not None:
            self.discard(data)
            return
        if self.refused:
            return
        if self.awaiting_headers:
            self.header_bytes += len(data)
        super().data_received(data)
        if not self.awaiting_headers or self.refused or self.header_bytes == 0:
            return
        limit = self.max_header_block
        if self.header_bytes > limit:
            self.refuse(
                RequestHeadersTooLarge(f"The request line and headers exceed {limit} bytes.")
            )
        elif self.header_deadline is None:
            # Armed once the parser is left with an incomplete header block: a block that
            # arrived whole in this read needs no deadline.
            self.arm_header_deadline()

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this on a parse error: a callback's refusal, or bytes that are not HTTP."""
        refusal, self.pending_refusal = self.pending_refusal, None
        self.refuse(refusal or BadRequest("The request is not valid HTTP/1.1."))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.awaiting_headers = True

    def on_headers_complete(self) -> None:
        self.awaiting_headers = False
        self.header_bytes = 0
        self.disarm_header_deadline()
        method = self.parser.get_method().decode("ascii", "replace")
        http_11 = self.parser.get_http_version() == "1.1"
        if refusal := framing_refusal(method, self.headers, http_11):
            # Raising stops the parser here; uvicorn then calls `send_400_response`.
            self.pending_refusal = refusal
            raise refusal
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # a WebSocket: uvicorn hands the connection to its WebSocket protocol
        self.requests += 1
        cycle = self.cycle
        # An ignored Upgrade (h2c) makes this the connection's last request: the parser
        # treats what follows as upgrade data.
        self.keep_alive_wanted = cycle.keep_alive and not self.parser.should_upgrade()
        # Until the body has all arrived, a response is the connection's last: what the
        # client still sends of a refused body must never be read as its next request.
        cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.awaiting_headers = True
        self.header_bytes = 0
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = self.keep_alive_wanted and self.may_keep_alive()

    def may_keep_alive(self) -> bool:
        """Whether the connection may carry another request after this one's response."""
        limits = self.limits
        return (
            not (self.refused or self.draining)
            and self.requests < limits.keepalive_requests
            and self.loop.time() - self.opened < limits.keepalive_time
        )

    def on_response_complete(self) -> None:
        if self.lingering_until is None:
            super().on_response_complete()

    def shutdown(self) -> None:
        self.draining = True
        super().shutdown()

    def arm_header_deadline(self) -> None:
        self.header_deadline = self.loop.call_later(
            self.limits.client_header_timeout, self.header_timed_out
        )

    def disarm_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def header_timed_out(self) -> None:
        self.header_deadline = None
        if self.header_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()
            return
        seconds = self.limits.client_header_timeout
        self.refuse(RequestTimeout(f"The request headers did not arrive within {seconds:g} s."))

    def refuse(self, refusal: ServiceError, *, linger: bool = True) -> None:
        """Answer `refusal` and close. While earlier requests' responses are still due, they
        go out first, in order, and the connection closes after the last of them (the refusal
        itself unsent), so no answer ever goes to the wrong request."""
        self.refused = True
        # What earlier responses left held goes out before the refusal, which is written
        # straight to the socket.
        self.cycle_transport.flush()
        self.disarm_header_deadline()
        self.flow.pause_reading()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.more_body:
                cycle.disconnected = True
                cycle.message_event.set()
                if not cycle.response_started:
                    self.transport.write(problem_bytes(refusal))
                self.linger()
            else:
                cycle.keep_alive = False  # the last request parsed, queued or under way
            return
        if not self.transport.is_closing():
            self.transport.write(problem_bytes(refusal))
            if linger:
                self.linger()
            else:
                self.transport.close()

    def close_after_response(self) -> None:
        """A request cycle closes the connection (its response was the last, or it failed):
        lingering when input is still unread, at once when not."""
        unread = self.refused or self.pipeline or self.flow.read_paused
        if unread or (self.cycle is not None and self.cycle.more_body):
            self.linger()
        else:
            self.transport.close()

    def linger(self) -> None:
        """Shut the write side once the answer is out, then read and discard what arrives,
        within the lingering bounds, before closing (see the module's doc)."""
        if self.lingering_until is not None or self.transport.is_closing():
            return
        now = self.loop.time()
        self.lingering_until = now + self.limits.lingering_time
        self.lingering_input = now
        self.pipeline.clear()
        self.disarm_header_deadline()
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.check_lingering()

    def discard(self, data: bytes) -> None:
        self.lingering_bytes += len(data)
        self.lingering_input = self.loop.time()
        if self.lingering_bytes > self.limits.lingering_max_bytes:
            self.transport.close()

    def check_lingering(self) -> None:
        """Close once a lingering bound is reached, else look again when the next one can be."""
        assert self.lingering_until is not None
        now = self.loop.time()
        quiet_until = self.lingering_input + self.limits.lingering_timeout
        if now >= min(quiet_until, self.lingering_until):
            self.lingering_check = None
            self.transport.close()
            return
        self.lingering_check = self.loop.call_at(
            min(quiet_until, self.lingering_until), self.check_lingering
        )
