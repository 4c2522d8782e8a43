from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response

from audits_service.database import get_engine
from audits_service.trail import service
from audits_service.trail.schemas import AuditHistory, TrailHead, VerifyReport
from servicekit import problem_responses

router = APIRouter(prefix="/audits", tags=["trail"])

HISTORY_LIMIT_MAX = 1000


@router.get(
    "/verify",
    summary="Verify the whole trail",
    description=(
        "Recomputes every sealed event's hash and every checkpoint from the database, and "
        "checks each record against its last event. 200 either way: the answer is `status`, "
        "and `first_broken` names the earliest problem. With `since_hash` (a `head.hash` "
        "published earlier) it also proves the trail still extends that head.\n\n"
        "A verification still running after a second is streamed: the body then starts "
        "with one space per second of work (JSON whitespace, so it parses as the same "
        "report) and ends with the report, so proxies that bound the wait for the next "
        "byte (the gateway's `AUDITS_TIMEOUT`) do not cut it off. If the database fails "
        "after that, the body ends without its closing chunk instead of a 503 problem."
    ),
    response_model=VerifyReport,
    responses=problem_responses(422, 503),
)
async def verify_trail(
    request: Request,
    since_hash: Annotated[
        str | None,
        Query(
            pattern="^[0-9a-f]{64}$",
            description="An earlier `head.hash` (lowercase hex).",
            examples=["5c2b8e0f4f3e1d6a9b7c0e2d4f6a8b0c1d3e5f7a9b0c2d4e6f8a0b1c3d5e7f9a"],
        ),
    ] = None,
) -> VerifyReport | Response:
    return await service.verify_answer(await get_engine(request), since_hash)


@router.get(
    "/head",
    summary="The current head of the trail",
    description="The last sealed event's `seq` and `hash`: publish it elsewhere, and later "
    "`verify?since_hash=` proves the trail extends it.",
    responses=problem_responses(503),
)
async def read_trail_head(request: Request) -> TrailHead:
    return await service.head(await get_engine(request))


After = Annotated[int, Query(ge=0, le=2**63 - 1, description="Events after this seq.")]
Limit = Annotated[int, Query(ge=1, le=HISTORY_LIMIT_MAX, description="Page size.")]


@router.get(
    "/events",
    summary="The whole trail, oldest first",
    description="Every event of every record in `seq` order, each with its hash (null until "
    "sealed): page with `after=next_after` to export the trail and re-verify it offline "
    "(audits-service/scripts/verify_export.py).",
    responses=problem_responses(422, 503),
)
async def list_trail_events(request: Request, after: After = 0, limit: Limit = 100) -> AuditHistory:
    return await service.events(await get_engine(request), after, limit)


@router.get(
    "/{audit_id}/history",
    summary="A record's events, oldest first",
    description="Every create, update, delete and purge of the record, each with its hash "
    "(null until sealed). Deleted records keep their history. 404 if the id never existed.",
    responses=problem_responses(404, 422, 503),
)
async def read_audit_history(
    request: Request,
    audit_id: Annotated[UUID, Path(description="The record's id.")],
    after: After = 0,
    limit: Limit = 100,
) -> AuditHistory:
    return await service.history(await get_engine(request), audit_id, after, limit)
