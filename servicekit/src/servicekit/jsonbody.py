"""A strict reading of JSON request bodies: a body means one thing to every parser.

Python's `json` keeps the last of two equal keys, while another parser (an upstream's) may keep
the first: `{"model": "<not allowed>", "model": "gpt-4o-mini"}` would pass the allowlist here
and reach the upstream as the model refused, and a record stored from such a body keeps a value
its sender's own tools may read differently. So on these routes (the LLM service's, the audit
records' writes) a duplicate key, like nesting too deep for the parser or an integer too long
to convert, is a JSON decode error, which FastAPI answers as a 422 validation problem.
"""

import json
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        raise _DuplicateKey(f"duplicate key {next(k for k, n in counts.items() if n > 1)!r}")
    return body


def _decode_error(message: str, text: str | bytes) -> json.JSONDecodeError:
    doc = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    return json.JSONDecodeError(message, doc, 0)


# One decoder for every body: `json.loads` with a hook builds a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def strict_loads(text: str | bytes) -> Any:
    """`json.loads`, refusing duplicate keys; every refusal is a `json.JSONDecodeError`."""
    try:
        if isinstance(text, bytes):
            # What `json.loads` does with bytes: UTF-8, -16 or -32, told apart by the start.
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        return _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise _decode_error("nesting too deep", text) from None
    except ValueError as error:  # a duplicate key, an integer beyond Python's digit limit
        raise _decode_error(str(error), text) from None


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body is read by `strict_loads`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            return await handle(StrictJSONRequest(request.scope, request.receive))

        return handler
