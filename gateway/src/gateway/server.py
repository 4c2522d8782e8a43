"""The gateway's HTTP/1.1 server protocol: uvicorn's httptools protocol with the connection
limits a public edge needs, enforced before a request reaches the app.

Serve the gateway with `uvicorn --http gateway.server:EdgeHttpProtocol` (`make run`, the image
and the manifests do). On top of uvicorn's own behaviour:

- a connection beyond `MAX_CONNECTIONS` is answered 503 and closed at once;
- a header block that grows past `MAX_URL_BYTES + MAX_HEADER_BYTES` before it is complete is
  answered 431 and the connection closed (the parser never buffers more than that plus one read);
- a header block not complete within `CLIENT_HEADER_TIMEOUT` of its first byte, or of the
  connection's start, is answered 408 (or just closed, when nothing arrived) and closed;
- a request that is not valid HTTP/1.1, that has no Host or two, a `Transfer-Encoding` other
  than `chunked`, an `Upgrade` together with a body, or the `CONNECT` method is answered 400
  and closed: nothing after it on the connection is read.

Every such answer is a problem document (`application/problem+json`) with a fresh request ID.
"""

import asyncio
import uuid
from functools import cache

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.config import Settings
from servicekit import REQUEST_ID_HEADER
from servicekit.errors import (
    BadRequest,
    MethodNotAllowed,
    RequestHeadersTooLarge,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
)
from servicekit.problems import PROBLEM_MEDIA_TYPE, problem_body


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
    request_id = str(uuid.uuid4())
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


class EdgeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with connection-level limits (see the module's doc)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        settings = _settings()
        self.max_header_block = settings.max_url_bytes + settings.max_header_bytes
        self.header_timeout = settings.client_header_timeout
        self.header_bytes = 0
        self.awaiting_headers = True
        self.refused = False
        self.pending_refusal: ServiceError | None = None
        self.header_deadline: asyncio.TimerHandle | None = None
        if len(self.connections) > settings.max_connections:
            self.refuse(
                ServiceUnavailable(
                    f"More than {settings.max_connections} connections are open; retry later."
                )
            )
            return
        self.arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.awaiting_headers:
            self.header_bytes += len(data)
            if self.header_deadline is None:
                self.arm_header_deadline()
        super().data_received(data)
        if self.awaiting_headers and self.header_bytes > self.max_header_block and not self.refused:
            self.refuse(
                RequestHeadersTooLarge(
                    f"The request line and headers exceed {self.max_header_block} bytes."
                )
            )

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
        if self.parser.should_upgrade() and not self._should_upgrade():
            # An ignored Upgrade (h2c): the parser treats what follows as upgrade data, so
            # this is the connection's last request.
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.awaiting_headers = True
        self.header_bytes = 0

    def arm_header_deadline(self) -> None:
        self.header_deadline = self.loop.call_later(self.header_timeout, self.header_timed_out)

    def disarm_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def header_timed_out(self) -> None:
        self.header_deadline = None
        if self.header_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()
            return
        self.refuse(
            RequestTimeout(f"The request headers did not arrive within {self.header_timeout:g} s.")
        )

    def refuse(self, refusal: ServiceError) -> None:
        """Answer `refusal` and close. While an earlier request's response is still due, that
        response goes out first and the connection closes after it, so no answer ever goes to
        the wrong request."""
        self.refused = True
        self.disarm_header_deadline()
        self.flow.pause_reading()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.more_body:
                cycle.disconnected = True
                cycle.message_event.set()
                if not cycle.response_started:
                    self.transport.write(problem_bytes(refusal))
                self.transport.close()
            else:
                cycle.keep_alive = False
                self.pipeline.clear()
            return
        if not self.transport.is_closing():
            self.transport.write(problem_bytes(refusal))
            self.transport.close()
