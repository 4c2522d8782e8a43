"""RFC 9457 problem details: one error base, one response shape, one set of handlers."""

from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from servicekit.context import current_request_id
from servicekit.errors import (
    BY_STATUS,
    InternalError,
    NotFound,
    ServiceError,
    UnexpectedHTTPError,
    UnsupportedMediaType,
    ValidationFailed,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ValidationIssue(BaseModel):
    loc: list[str | int]
    message: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document, as every error of every service is shaped."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/not_found",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "No route matches /api/v1/nope.",
                    "instance": "/api/v1/nope",
                    "code": NotFound.code,
                    "request_id": "3f1c0b9e-8f7a-4a51-9a4e-0f6f1f2b9c11",
                }
            ]
        }
    )

    type: str = Field(description="URI reference naming the problem type.")
    title: str = Field(description="Short, human-readable summary of the problem type.")
    status: int = Field(description="HTTP status code.")
    detail: str | None = Field(default=None, description="Explanation of this occurrence.")
    instance: str | None = Field(default=None, description="The request path.")
    code: str = Field(description="Stable snake_case error code.")
    request_id: str | None = Field(default=None, description="The request's X-Request-ID.")
    errors: list[ValidationIssue] | None = Field(
        default=None, description="Validation errors, one per offending input."
    )


# The OpenAI-compatible routes. Their problems also carry OpenAI's `error` object, which the
# official SDKs take their exception's message, type and code from, whichever service answers:
# the llm service, or the gateway in front of it (its rate limit, body limit, timeouts).
OPENAI_COMPATIBLE_PREFIX = "/api/v1/openai/v1/"


def openai_error(problem: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's `error` object for a problem document: the detail as `message`, the code as
    `type` and `code`, the first offending field's dotted path (below `body`) as `param`."""
    errors = problem.get("errors") or ()
    loc = [str(part) for part in errors[0]["loc"][1:]] if errors else []
    return {
        "message": problem.get("detail") or problem["title"],
        "type": problem["code"],
        "param": ".".join(loc) or None,
        "code": problem["code"],
    }


def problem_body(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    instance: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
        "request_id": current_request_id(),
    }
    if errors is not None:
        body["errors"] = list(errors)
    if instance is not None and instance.startswith(OPENAI_COMPATIBLE_PREFIX):
        body["error"] = openai_error(body)
    return body


def problem_response(
    status: int,
    code: str,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    title = title or HTTPStatus(status).phrase
    body = problem_body(status, code, title, detail, instance, errors)
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def error_response(error: ServiceError, instance: str | None) -> Response:
    """The problem response for `error`: an ASGI app, so pure ASGI middleware sends it
    the way FastAPI's handlers return it."""
    return problem_response(
        error.status,
        error.code,
        error.title,
        error.detail,
        instance,
        errors=error.errors,
        headers=error.headers,
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting each status as a problem document."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def _printable_loc(loc: Iterable[Any]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


def validation_issues(exc: RequestValidationError) -> list[dict[str, Any]]:
    """One issue per offending input: a parameter that two dependencies share (FastAPI
    validates it for each) is reported once."""
    issues: list[dict[str, Any]] = []
    for error in exc.errors():
        issue = {
            "loc": _printable_loc(error["loc"]),
            "message": error["msg"],
            "type": error["type"],
        }
        if issue not in issues:
            issues.append(issue)
    return issues


async def _service_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc, request.url.path)


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _validation_error(exc: RequestValidationError, content_type: str | None) -> ServiceError:
    if isinstance(exc.body, bytes) and exc.body and not _is_json(content_type):
        # FastAPI hands a body that is not declared as JSON to validation as raw bytes.
        return UnsupportedMediaType(
            f"The request body must be application/json, not {content_type or 'undeclared'}."
        )
    issues = validation_issues(exc)
    detail = "; ".join(f"{'.'.join(map(str, i['loc']))}: {i['message']}" for i in issues[:5])
    return ValidationFailed(detail, errors=issues)


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    error = _validation_error(exc, request.headers.get("content-type"))
    return error_response(error, request.url.path)


_NOT_UTF8 = "The body is not UTF-8, so not JSON."


def _http_error(request: Request, exc: StarletteHTTPException) -> ServiceError:
    status = exc.status_code
    if status == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI answers a body that is not UTF-8 with its own 400 ("error parsing the
        # body"); it is malformed JSON like any other, so the same 422.
        issue = {"loc": ["body"], "message": _NOT_UTF8, "type": "json_invalid"}
        return ValidationFailed(f"body: {_NOT_UTF8}", errors=[issue])
    detail = exc.detail if isinstance(exc.detail, str) else None
    headers = exc.headers
    if status == 404 and detail == "Not Found":
        detail = f"No resource at {request.url.path}."
    if status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    error = BY_STATUS.get(status)
    if error is None:
        return UnexpectedHTTPError(status, detail, headers=headers)
    return error(detail, headers=headers)


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(_http_error(request, exc), request.url.path)


_METHODS = ("DELETE", "GET", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path.

    Starlette names only the first matching route's methods, and FastAPI's included
    routers expose no method list, so each method is asked of the router as a request would.
    """
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    if "GET" in allowed:
        allowed.append("HEAD")  # served as GET without a body by HeadAsGetMiddleware
    return ", ".join(sorted(allowed))


async def _unhandled_error_handler(request: Request, exc: Exception) -> Response:
    logger.opt(exception=exc).error("unhandled error on {} {}", request.method, request.url.path)
    return error_response(InternalError("An unexpected error occurred."), request.url.path)


def document_unsupported_media_type(app: FastAPI) -> None:
    """Every operation that takes a body documents the 415 its handler may answer."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        if "Problem" not in schema.get("components", {}).get("schemas", {}):
            return schema
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                if isinstance(operation, dict) and "requestBody" in operation:
                    operation.setdefault("responses", {}).setdefault(
                        "415",
                        {
                            "description": HTTPStatus(415).phrase,
                            "content": {
                                PROBLEM_MEDIA_TYPE: {
                                    "schema": {"$ref": "#/components/schemas/Problem"}
                                }
                            },
                        },
                    )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unhandled_error_handler)
