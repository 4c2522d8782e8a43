import re
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response, status
from starlette.convertors import Convertor, register_url_convertor

from audits_service.audits import service
from audits_service.audits.constants import COLLECTION_ROUTES, IDEMPOTENT_REPLAYED_HEADER
from audits_service.audits.dependencies import IdempotencyKeyHeader, IdempotencyTtlDep
from audits_service.audits.schemas import (
    AuditListParams,
    AuditRecordCreate,
    AuditRecordPage,
    AuditRecordResponse,
    AuditRecordUpdate,
)
from audits_service.database import SessionDep
from servicekit import current_request_id, problem_responses

router = APIRouter(prefix="/audits", tags=["audits"])


class RecordIdConvertor(Convertor[str]):
    """A path segment naming a record: any but the collection's own sub-routes. It stays a
    string; the route's `UUID` parameter validates it (a malformed id is a 422)."""

    regex = f"(?!(?:{'|'.join(map(re.escape, COLLECTION_ROUTES))})$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("record_id", RecordIdConvertor())

AuditId = Annotated[UUID, Path(description="The record's id.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create an audit record",
    response_description="The record as stored; `Location` names it.",
    responses={
        **problem_responses(409, 422, 503),
        201: {
            "headers": {
                "Location": {
                    "description": "Path of the new record.",
                    "schema": {"type": "string"},
                },
                IDEMPOTENT_REPLAYED_HEADER: {
                    "description": "`true` when this is the stored response to an earlier "
                    "request with the same Idempotency-Key.",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            }
        },
    },
)
async def create_audit(
    body: AuditRecordCreate,
    session: SessionDep,
    request: Request,
    response: Response,
    ttl: IdempotencyTtlDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> AuditRecordResponse:
    request_id = current_request_id() or ""
    if idempotency_key is None:
        record = await service.create_audit(session, body, request_id)
    else:
        record, replayed = await service.create_audit_idempotent(
            session, body, request_id, idempotency_key, ttl
        )
        if replayed:
            response.headers[IDEMPOTENT_REPLAYED_HEADER] = "true"
    # A path, not a URL: behind the gateway only the path is the same for the client.
    # Built from this route's own path: `url_path_for` tries every route of the app.
    response.headers["Location"] = f"{request.scope['path']}/{record.id}"
    return record


@router.get(
    "",
    summary="List audit records, newest first",
    description=(
        "Filters combine with AND. Page with `limit`/`offset`, or with `cursor` set to the "
        "previous page's `next_cursor` (keyset pagination: constant cost at any depth). "
        "`include_total=false` skips the count."
    ),
    responses=problem_responses(422, 503),
)
async def list_audits(
    params: Annotated[AuditListParams, Query()], session: SessionDep
) -> AuditRecordPage:
    return await service.list_audits(session, params)


@router.get(
    "/{audit_id:record_id}",
    summary="Read one audit record",
    responses=problem_responses(404, 422, 503),
)
async def read_audit(audit_id: AuditId, session: SessionDep) -> AuditRecordResponse:
    return await service.get_audit(session, audit_id)


@router.put(
    "/{audit_id:record_id}",
    summary="Update an audit record",
    description="Any non-empty subset of the writable fields; `updated_at` advances.",
    responses=problem_responses(404, 422, 503),
)
async def update_audit(
    audit_id: AuditId, body: AuditRecordUpdate, session: SessionDep
) -> AuditRecordResponse:
    return await service.update_audit(session, audit_id, body, current_request_id() or "")


@router.delete(
    "/{audit_id:record_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete an audit record",
    responses=problem_responses(404, 422, 503),
)
async def delete_audit(audit_id: AuditId, session: SessionDep) -> None:
    await service.delete_audit(session, audit_id, current_request_id() or "")
