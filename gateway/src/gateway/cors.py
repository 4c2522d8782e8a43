"""CORS for the gateway: Starlette's `CORSMiddleware`, with a shorter path for the requests
that carry no `Origin` (API clients, other services: nearly all of a gateway's traffic).

Starlette's middleware answers such a request by wrapping it in its `Headers` and each
response head in `MutableHeaders`, only to add `Vary: Origin`; on a proxied request that
wrapping is one of the largest costs the gateway adds (`make bench`, row `proxy`). Here a
request without `Origin` gets the same `Vary` header from a plain scan of the header list;
every request with an `Origin` (preflights included) is Starlette's, unchanged.
"""

from functools import partial

from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

_ORIGIN = b"origin"
_VARY = b"vary"


def vary_on_origin(headers: list[tuple[bytes, bytes]]) -> None:
    """Add `Origin` to a response's `Vary`, as Starlette does: every `Vary` joined into the
    first one, `Origin` last."""
    at = [index for index, (name, _) in enumerate(headers) if name == _VARY]
    if not at:
        headers.append((_VARY, b"Origin"))
        return
    joined = b", ".join([*(headers[index][1] for index in at), b"Origin"])
    headers[at[0]] = (_VARY, joined)
    for index in reversed(at[1:]):
        del headers[index]


async def _send_varying(send: Send, message: Message) -> None:
    if message["type"] == "http.response.start":
        # A copy, as Starlette's: an app may send a tuple, or headers it reuses.
        message["headers"] = headers = list(message.get("headers", ()))
        vary_on_origin(headers)
    await send(message)


class GatewayCORSMiddleware(CORSMiddleware):
    """Starlette's CORS; a request without `Origin` only has `Vary: Origin` added."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(name == _ORIGIN for name, _ in scope["headers"]):
            await super().__call__(scope, receive, send)
            return
        await self.app(scope, receive, partial(_send_varying, send))
