"""The catalogue of errors: one `ServiceError` subclass per problem code that more than one
service answers with. A service's own codes are subclasses in its `exceptions.py`."""

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any


class ServiceError(Exception):
    """Base of every error a service raises on purpose; rendered as a problem."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal Server Error"
    errors: Sequence[Mapping[str, Any]] | None = None

    def __init__(self, detail: str | None = None, *, headers: Mapping[str, str] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = dict(headers or {})


class InternalError(ServiceError):
    """Anything unexpected: logged, and answered without a word about its cause."""


class BadRequest(ServiceError):
    status, code, title = 400, "bad_request", HTTPStatus(400).phrase


class Unauthorized(ServiceError):
    """No credentials, or credentials nobody issued; carries a `WWW-Authenticate` challenge."""

    status, code, title = 401, "unauthorized", HTTPStatus(401).phrase


class Forbidden(ServiceError):
    status, code, title = 403, "forbidden", HTTPStatus(403).phrase


class NotFound(ServiceError):
    status, code, title = 404, "not_found", HTTPStatus(404).phrase


class MethodNotAllowed(ServiceError):
    status, code, title = 405, "method_not_allowed", HTTPStatus(405).phrase


class NotAcceptable(ServiceError):
    status, code, title = 406, "not_acceptable", HTTPStatus(406).phrase


class RequestTimeout(ServiceError):
    status, code, title = 408, "request_timeout", HTTPStatus(408).phrase


class Conflict(ServiceError):
    status, code, title = 409, "conflict", HTTPStatus(409).phrase


class PayloadTooLarge(ServiceError):
    status, code, title = 413, "payload_too_large", "Payload Too Large"


class UriTooLong(ServiceError):
    status, code, title = 414, "uri_too_long", HTTPStatus(414).phrase


class UnsupportedMediaType(ServiceError):
    status, code, title = 415, "unsupported_media_type", HTTPStatus(415).phrase


class ValidationFailed(ServiceError):
    """The request is well-formed but its content is not valid; one issue per input."""

    status, code, title = 422, "validation_error", "Validation Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail, headers=headers)
        self.errors = list(errors)


class RateLimited(ServiceError):
    status, code, title = 429, "rate_limited", HTTPStatus(429).phrase


class RequestHeadersTooLarge(ServiceError):
    status, code, title = 431, "request_header_fields_too_large", HTTPStatus(431).phrase


class UpstreamUnavailable(ServiceError):
    status, code, title = 502, "upstream_unavailable", "Upstream unavailable"


class ServiceUnavailable(ServiceError):
    status, code, title = 503, "service_unavailable", HTTPStatus(503).phrase


class ShuttingDown(ServiceError):
    """Readiness while the service drains after SIGTERM."""

    status, code, title = 503, "shutting_down", "Shutting down"


class UpstreamTimeout(ServiceError):
    status, code, title = 504, "upstream_timeout", "Upstream timed out"


class UnexpectedHTTPError(ServiceError):
    """A framework error with a status the catalogue has no entry for."""

    code = "http_error"

    def __init__(
        self, status: int, detail: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail, headers=headers)
        self.status = status
        self.title = HTTPStatus(status).phrase


# What Starlette's HTTPException (raised by routing and FastAPI itself) becomes, by status.
BY_STATUS: Mapping[int, type[ServiceError]] = {
    error.status: error
    for error in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        NotAcceptable,
        RequestTimeout,
        Conflict,
        PayloadTooLarge,
        UriTooLong,
        UnsupportedMediaType,
        ValidationFailed,
        RateLimited,
        RequestHeadersTooLarge,
        InternalError,
        UpstreamUnavailable,
        ServiceUnavailable,
        UpstreamTimeout,
    )
}
