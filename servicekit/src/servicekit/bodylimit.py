"""A limit on request bodies, for a service whose routes read their bodies whole.

The limit is enforced where the route reads its body: `receive` raises a 413 `HTTPException`
once the declared `Content-Length` or the bytes received so far go over it, so the route's
own error rendering answers it (on an OpenAI-compatible route, with OpenAI's `error`
object) and nothing past the limit is ever buffered. A route that reads no body is not
affected. (Starlette's `RequestBodyLimitMiddleware`, behind FastAPI's `max_body_size`,
replaces any response to a request declaring too long a body with a plain-text 413, which
is not a problem document and does not say the limit.)
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, _LimitedReceive(receive, scope, self.max_bytes), send)


class _LimitedReceive:
    def __init__(self, receive: Receive, scope: Scope, max_bytes: int) -> None:
        self._receive = receive
        self._max_bytes = max_bytes
        self._received = 0
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        self._declared = int(declared) if declared is not None and declared.isdigit() else 0

    async def __call__(self) -> Message:
        if self._declared > self._max_bytes:
            raise self._too_large()
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._max_bytes:
                raise self._too_large()
        return message

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"The request body exceeds {self._max_bytes} bytes.")
