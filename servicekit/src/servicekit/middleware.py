"""Pure ASGI middleware: request IDs, one access line per request, the last-resort 500."""

import time

from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servicekit.context import (
    CLIENT_ID_HEADER,
    REQUEST_ID_HEADER,
    VALID_CLIENT_ID,
    accept_request_id,
    client_id_var,
    request_id_var,
)
from servicekit.errors import InternalError
from servicekit.logs import log_access
from servicekit.metrics import ROUTE_TEMPLATE, RequestMetrics
from servicekit.problems import error_response

_REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.lower().encode()
_CLIENT_ID_HEADER_BYTES = CLIENT_ID_HEADER.lower().encode()


def forwarded_client_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The gateway's `X-Client-ID`, when well-formed."""
    for name, value in headers:
        if name == _CLIENT_ID_HEADER_BYTES:
            client_id = value.decode("latin-1")
            return client_id if VALID_CLIENT_ID.fullmatch(client_id) else None
    return None


class RequestContextMiddleware:
    """Assigns the request ID, echoes it on every response, logs the request once and
    records it in `metrics`.

    An exception that escapes the app becomes a bland 500 problem here, so that even
    that response carries the request ID and nothing internal leaks.

    `trust_client_id`: take the client ID from `X-Client-ID` (a service behind the gateway);
    otherwise it starts unset and the app sets it (the gateway, once it knows the key).
    """

    def __init__(
        self,
        app: ASGIApp,
        access_log: bool = True,
        trust_client_id: bool = False,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.trust_client_id = trust_client_id
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        incoming = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_HEADER_BYTES:
                incoming = value.decode("latin-1")
                break
        request_id = accept_request_id(incoming)
        token = request_id_var.set(request_id)
        client_token = client_id_var.set(
            forwarded_client_id(scope["headers"]) if self.trust_client_id else None
        )
        started = time.perf_counter()
        status = 500
        response_started = False

        request_id_header = (_REQUEST_ID_HEADER_BYTES, request_id.encode("latin-1"))

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                # The one request ID header, ours (an upstream's echo of it is replaced).
                headers = [
                    header
                    for header in message.get("headers", ())
                    if header[0] != _REQUEST_ID_HEADER_BYTES
                ]
                headers.append(request_id_header)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception as exc:
            logger.opt(exception=exc).error("unhandled error")
            if response_started:
                raise
            response = error_response(InternalError("An unexpected error occurred."), scope["path"])
            await response(scope, receive, send_with_request_id)
        finally:
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.observe(scope, status, elapsed)
            if self.access_log:
                log_access(scope["method"], scope["path"], status, round(elapsed * 1000, 2))
            client_id_var.reset(client_token)
            request_id_var.reset(token)


class HeadAsGetMiddleware:
    """HEAD wherever GET is served (RFC 9110 §9.3.2): the GET response without its body.

    FastAPI routes declare GET only; Starlette would add HEAD, FastAPI does not.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        as_get = {**scope, "method": "GET"}
        await self.app(as_get, receive, send_without_body)
        # The route that answered, for the request's metrics.
        for key in ("route", ROUTE_TEMPLATE):
            if key in as_get:
                scope[key] = as_get[key]
