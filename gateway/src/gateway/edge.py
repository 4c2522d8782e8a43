"""Checks on every request before anything else sees it: sizes of the request line and
headers, and paths that could escape a proxied prefix."""

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from servicekit import NotFound, RequestHeadersTooLarge, ServiceError, UriTooLong, error_response

# Encoded dots (%2e), slashes (%2f), backslashes (%5c) and NULs (%00) in a path only serve
# to sneak a different path past a prefix check, so the gateway refuses them outright.
_ENCODED_SEPARATOR = re.compile(rb"%(2[ef]|5c|00)", re.IGNORECASE)


def unsafe_path_reason(raw_path: bytes) -> str | None:
    """Why a raw request path is refused, or None when it is safe to route and forward."""
    # Each check looks for its telltale byte first: every request pays for this, and most
    # paths hold neither a `%` nor a `.`.
    if b"%" in raw_path and _ENCODED_SEPARATOR.search(raw_path):
        return "encoded dots, slashes, backslashes or NULs are not allowed in the path"
    if b"\\" in raw_path or b"//" in raw_path:
        return "backslashes and empty segments are not allowed in the path"
    if b"." in raw_path and any(segment in (b".", b"..") for segment in raw_path.split(b"/")):
        return "dot segments are not allowed in the path"
    return None


class EdgeGuardMiddleware:
    """The URL and header limits of a whole request (414 over `MAX_URL_BYTES`, 431 over
    `MAX_HEADER_BYTES`) and the path refusals.

    The server layer (`gateway.server`) only bounds a header block that is not yet complete,
    at the two limits' sum, so that the parser never buffers without end: it cannot tell the
    URL from the headers before the block ends, and has no request to answer in the context
    of. A complete block is judged here, so the answer is an ordinary one: the client's
    `X-Request-ID`, the access line, CORS headers a browser needs to read it. It also holds
    when the app runs under another server (a plain uvicorn, an ASGI test client)."""

    def __init__(self, app: ASGIApp, max_url_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        error = self._refusal(scope, raw_path)
        if error is None:
            await self.app(scope, receive, send)
            return
        # An overlong URL is not repeated back in `instance`.
        instance = None if isinstance(error, UriTooLong) else scope["path"]
        await error_response(error, instance)(scope, receive, send)

    def _refusal(self, scope: Scope, raw_path: bytes) -> ServiceError | None:
        if len(raw_path) + len(scope["query_string"]) > self.max_url_bytes:
            return UriTooLong(f"The URL is longer than {self.max_url_bytes} bytes.")
        if sum(len(n) + len(v) + 4 for n, v in scope["headers"]) > self.max_header_bytes:
            return RequestHeadersTooLarge(
                f"The request headers exceed {self.max_header_bytes} bytes."
            )
        if reason := unsafe_path_reason(raw_path):
            # No resource lives at such a path: 404 `not_found`, with the reason in `detail`.
            return NotFound(f"Refused: {reason}.")
        return None
