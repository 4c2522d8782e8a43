import re
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response, status
from starlette.convertors import Convertor, register_url_convertor

from audits_service.audits import export, service
from audits_service.audits.constants import (
    COLLECTION_ROUTES,
    CSV_MEDIA_TYPE,
    IDEMPOTENT_REPLAYED_HEADER,
    NDJSON_MEDIA_TYPE,
)
from audits_service.audits.dependencies import (
    EngineDep,
    IdempotencyKeyHeader,
    IdempotencyTtlDep,
    list_params,
    query_parameters,
)
from audits_service.audits.schemas import (
    AuditBatchCreate,
    AuditExportParams,
    AuditListParams,
    AuditRecordBatch,
    AuditRecordCreate,
    AuditRecordPage,
    AuditRecordResponse,
    AuditRecordUpdate,
)
from audits_service.database import DatabaseRoute, get_engine
from servicekit import current_client_id, current_request_id, problem_responses

# Strict JSON: a duplicate key, nesting too deep or an over-long integer is a 422, never a
# record stored from whichever of two values the parser happened to keep. A database that
# cannot serve is a 503.
router = APIRouter(prefix="/audits", tags=["audits"], route_class=DatabaseRoute)


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


_REPLAYED = {
    IDEMPOTENT_REPLAYED_HEADER: {
        "description": "`true` when this is the stored response to an earlier "
        "request with the same Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


def _json(body: bytes, status_code: int = status.HTTP_200_OK) -> Response:
    return Response(body, status_code, media_type="application/json")


def _created(created: service.Created, replayed: bool, location: str | None = None) -> Response:
    response = _json(created.body, status.HTTP_201_CREATED)
    if replayed:
        response.headers[IDEMPOTENT_REPLAYED_HEADER] = "true"
    if location is not None:
        response.headers["Location"] = location
    return response


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AuditRecordResponse,
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
                **_REPLAYED,
            }
        },
    },
)
async def create_audit(
    body: AuditRecordCreate,
    database: EngineDep,
    request: Request,
    ttl: IdempotencyTtlDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    request_id, client_id = current_request_id() or "", current_client_id()
    replayed = False
    if idempotency_key is None:
        created = await service.create_audit(database, body, request_id, client_id)
    else:
        created, replayed = await service.create_audit_idempotent(
            database, body, request_id, client_id, idempotency_key, ttl
        )
    # A path, not a URL: behind the gateway only the path is the same for the client.
    # Built from this route's own path: `url_path_for` tries every route of the app.
    return _created(created, replayed, f"{request.scope['path']}/{created.audit_id}")


# -- bulk ingest ----------------------------------------------------------------------------


@router.post(
    "/batch",
    status_code=status.HTTP_201_CREATED,
    summary="Create many audit records at once, all or none",
    description=(
        "1-1000 records in one transaction: every one is stored, or none is. A record that "
        "fails validation makes the whole batch a 422 whose `errors[].loc` names it by "
        'index, e.g. `["body", "records", 3, "actor"]`. `Idempotency-Key` works as on '
        "the single create. The body must also fit the gateway's MAX_BODY_BYTES."
    ),
    response_description="The stored records, in the order given.",
    response_model=AuditRecordBatch,
    responses={**problem_responses(409, 422, 503), 201: {"headers": _REPLAYED}},
)
async def create_audits(
    body: AuditBatchCreate,
    database: EngineDep,
    ttl: IdempotencyTtlDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    request_id, client_id = current_request_id() or "", current_client_id()
    if idempotency_key is None:
        return _created(await service.create_audits(database, body, request_id, client_id), False)
    created, replayed = await service.create_audits_idempotent(
        database, body, request_id, client_id, idempotency_key, ttl
    )
    return _created(created, replayed)


@router.get(
    "",
    summary="List audit records, newest first",
    description=(
        "Filters combine with AND. Page with `limit`/`offset`, or with `cursor` set to the "
        "previous page's `next_cursor` (keyset pagination: constant cost at any depth). "
        "`include_total=false` skips the count."
    ),
    response_model=AuditRecordPage,
    responses=problem_responses(422, 503),
    openapi_extra={"parameters": query_parameters(AuditListParams)},
)
async def list_audits(request: Request) -> Response:
    # The query and the engine read here, not by dependencies: see `list_params`.
    engine = await get_engine(request)
    return _json(await service.list_audits(engine, list_params(request)))


# -- export (before `/{audit_id}`, which would take "export" for an id) ---------------------

_NDJSON_EXAMPLE = (
    '{"id":"01a215df-8c84-7376-862d-f9dc91ca4485","action":"login","status":"success",'
    '"actor":"user:alice@example.com","resource_type":"session","resource_id":"sess_9f8e7d",'
    '"description":"Interactive login with MFA","metadata":{"mfa": "totp"},'
    '"ip_address":"203.0.113.7","user_agent":"Mozilla/5.0",'
    '"request_id":"3f1c0b9e-8f7a-4a51-9a4e-0f6f1f2b9c11","client_id":"ci-bot",'
    '"created_at":"2026-11-26T03:30:00.123456Z","updated_at":"2026-11-26T03:30:00.123456Z"}\n'
)
_CSV_EXAMPLE = (
    ",".join(export.FIELDS) + "\r\n"
    "01a215df-8c84-7376-862d-f9dc91ca4485,login,success,user:alice@example.com,session,"
    'sess_9f8e7d,"Login, with MFA","{""mfa"": ""totp""}",203.0.113.7,Mozilla/5.0,'
    "3f1c0b9e-8f7a-4a51-9a4e-0f6f1f2b9c11,ci-bot,2026-11-26T03:30:00.123456Z,"
    "2026-11-26T03:30:00.123456Z\r\n"
)


@router.get(
    "/export",
    summary="Export every matching audit record, newest first (NDJSON or CSV)",
    description=(
        "The listing's filters, no paging: every matching record, streamed. `ndjson`: one "
        "record per line, each an `AuditRecordResponse`. `csv`: RFC 4180 (CRLF, a header "
        "row naming the fields, `metadata` as a JSON string, an empty field for null). "
        "With `escape_formulas=true` (CSV only) a field a spreadsheet would run as a "
        "formula (starting with `=`, `+`, `-`, `@`, tab or CR) or starting with `'` gets "
        "a leading `'`; without it every value is exactly as stored. "
        "If the export fails after it has started, an NDJSON stream ends with a last line "
        '`{"error": <problem>}`, and a CSV stream is cut off without its closing chunk '
        "(an incomplete chunked body, which HTTP clients report as an error). A database "
        "that is down before the first row is a 503 problem."
    ),
    response_class=export.ExportResponse,
    status_code=status.HTTP_200_OK,
    response_description="The records, as an attachment.",
    responses={
        **problem_responses(422, 503),
        200: {
            "headers": {
                "Content-Disposition": {
                    "description": "`attachment` with a file name such as "
                    "`audits-20261126T033000Z.ndjson`.",
                    "schema": {"type": "string"},
                }
            },
            "content": {
                NDJSON_MEDIA_TYPE: {
                    "schema": {"type": "string", "description": "One JSON record per line."},
                    "example": _NDJSON_EXAMPLE,
                },
                CSV_MEDIA_TYPE: {"schema": {"type": "string"}, "example": _CSV_EXAMPLE},
            },
        },
    },
)
async def export_audits(
    params: Annotated[AuditExportParams, Query()], engine: EngineDep, request: Request
) -> export.ExportResponse:
    return await export.export_audits(engine, params, request.url.path)


@router.get(
    "/{audit_id:record_id}",
    summary="Read one audit record",
    response_model=AuditRecordResponse,
    responses=problem_responses(404, 422, 503),
)
async def read_audit(audit_id: AuditId, database: EngineDep) -> Response:
    return _json(await service.get_audit(database, audit_id))


@router.put(
    "/{audit_id:record_id}",
    summary="Update an audit record",
    description="Any non-empty subset of the writable fields; `updated_at` advances.",
    response_model=AuditRecordResponse,
    responses=problem_responses(404, 422, 503),
)
async def update_audit(audit_id: AuditId, body: AuditRecordUpdate, database: EngineDep) -> Response:
    request_id, client_id = current_request_id() or "", current_client_id()
    return _json(await service.update_audit(database, audit_id, body, request_id, client_id))


@router.delete(
    "/{audit_id:record_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete an audit record",
    responses=problem_responses(404, 422, 503),
)
async def delete_audit(audit_id: AuditId, database: EngineDep) -> None:
    await service.delete_audit(database, audit_id, current_request_id() or "", current_client_id())
