from collections.abc import Mapping, Sequence
from typing import Any

import httpx2
import orjson

from servicekit import NotFound, ServiceError, ValidationFailed, problems
from servicekit import UpstreamTimeout as UpstreamTimeout


class LLMNotConfigured(ServiceError):
    status, code, title = 503, "llm_not_configured", "LLM not configured"


class UpstreamFailure(ServiceError):
    """An upstream failure the client can act on; `upstream` is the error object the
    upstream sent with it, whose `type`, `code` and `param` reach OpenAI's clients unchanged."""

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        upstream: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, headers=headers)
        self.upstream = dict(upstream or {})


class UpstreamAuthFailed(ServiceError):
    status, code, title = 502, "upstream_auth_failed", "Upstream rejected our credentials"


class UpstreamBadRequest(UpstreamFailure):
    status, code, title = 400, "upstream_bad_request", "Upstream rejected the request"


class UpstreamRateLimited(UpstreamFailure):
    status, code, title = 429, "upstream_rate_limited", "Upstream rate limit reached"


class UpstreamError(ServiceError):
    status, code, title = 502, "upstream_error", "Upstream failed"


class ModelNotFound(NotFound):
    title = "Model not found"


class MalformedUpstreamResponse(Exception):
    """The upstream answered 200 with a body that is not what OpenAI's API returns."""


class UpstreamStatusError(Exception):
    """The upstream answered with an error status; `error` is OpenAI's error object."""

    def __init__(self, status: int, headers: httpx2.Headers, error: dict[str, Any]) -> None:
        super().__init__(f"upstream HTTP {status}")
        self.status = status
        self.headers = headers
        self.error = error

    @classmethod
    def from_reply(
        cls, status: int, headers: httpx2.Headers, content: bytes
    ) -> "UpstreamStatusError":
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
        error = body.get("error", body) if isinstance(body, dict) else None
        return cls(status, headers, error if isinstance(error, dict) else {})


_UPSTREAM_ERROR_FIELDS = ("type", "param", "code")
_MAX_UPSTREAM_FIELD = 200


def openai_error(problem: Mapping[str, Any], cause: Exception | None = None) -> dict[str, Any]:
    """servicekit's OpenAI `error` object for a problem document, with the upstream's own
    `type`, `param` and `code` when `cause` is an upstream failure that came with them (so
    that clients can branch on `context_length_exceeded`)."""
    error = problems.openai_error(problem)
    upstream = cause.upstream if isinstance(cause, UpstreamFailure) else {}
    for name in _UPSTREAM_ERROR_FIELDS:
        value = upstream.get(name)
        if isinstance(value, str) and 0 < len(value) <= _MAX_UPSTREAM_FIELD:
            error[name] = value
    return error


class InvalidChatRequest(ValidationFailed):
    """A request the schema accepts but the service's guards do not (model, token cap);
    answered like any validation error, one issue per offending field."""

    def __init__(self, issues: Sequence[tuple[Sequence[str], str, str]]) -> None:
        super().__init__(
            "; ".join(f"{'.'.join(loc)}: {message}" for loc, message, _ in issues),
            errors=[
                {"loc": list(loc), "message": message, "type": kind}
                for loc, message, kind in issues
            ],
        )
