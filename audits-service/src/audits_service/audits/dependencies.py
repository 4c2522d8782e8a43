from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.audits.constants import IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_MAX_LENGTH
from audits_service.audits.schemas import AuditListParams
from audits_service.config import Settings
from audits_service.database import get_engine


# `async def` even without awaiting: FastAPI runs a plain `def` dependency in a worker
# thread, a hop that shows in `make bench`'s `audits-post` CPU/request.
async def get_idempotency_ttl(request: Request) -> timedelta:
    settings: Settings = request.state.settings
    return timedelta(seconds=settings.idempotency_ttl)


IdempotencyTtlDep = Annotated[timedelta, Depends(get_idempotency_ttl)]


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_KEY_HEADER,
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX_LENGTH,
        pattern=r"^[\x21-\x7e]+$",
        description=(
            "Makes the create safe to retry (IETF draft-ietf-httpapi-idempotency-key-header): "
            "a repeat with the same key and body returns the original 201 response with "
            "`Idempotent-Replayed: true`; the same key with another body is a 422 "
            "`idempotency_key_reused`; a repeat while the first is in flight is a 409 "
            "`idempotency_in_progress`. Keys expire after IDEMPOTENCY_TTL seconds (24 h). "
            "1-255 visible ASCII characters, e.g. a UUID."
        ),
        examples=["8e03978e-40d5-43e8-bc93-6894a57f9324"],
    ),
]


def list_params(request: Request) -> AuditListParams:
    """The listing's query, validated by its model in one call, with FastAPI's errors (each
    `loc` under `query`).

    FastAPI's own reading of a query model (`Annotated[AuditListParams, Query()]`) inspects
    every field's annotation again on each request, and each dependency costs a pass of its
    own over the request's parameters: on the hottest read both are a visible share of its
    CPU (`make bench`, row `audits-reads`). As FastAPI does, the last of repeated values
    counts and unknown parameters are ignored; the route documents the same parameters
    (`query_parameters`)."""
    try:
        return AuditListParams.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in errors]
        ) from None


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """`model`'s fields as OpenAPI query parameters, as FastAPI documents a query model
    declared with `Query()` (its enums referenced in the app's components)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema["properties"].items():
        # FastAPI titles every parameter's schema; pydantic leaves a `$ref` or a replaced
        # schema untitled.
        field.setdefault("title", name.title().replace("_", " "))
        parameter = {"name": name, "in": "query", "required": name in required, "schema": field}
        if "description" in field:
            parameter["description"] = field["description"]
        parameters.append(parameter)
    return parameters
