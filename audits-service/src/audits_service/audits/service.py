"""Audit records in PostgreSQL: one SQL statement per operation on the hot paths.

Writes use Core `INSERT/UPDATE/DELETE … RETURNING`, so a record is written and read back
in one round trip without ORM identity-map bookkeeping.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import (
    ColumnElement,
    Row,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from audits_service.audits.exceptions import (
    AuditNotFound,
    IdempotencyInProgress,
    IdempotencyKeyReused,
)
from audits_service.audits.models import audit_record, idempotency_key, uuid7
from audits_service.audits.schemas import (
    AuditBatchCreate,
    AuditFilters,
    AuditListParams,
    AuditRecordBatch,
    AuditRecordCreate,
    AuditRecordPage,
    AuditRecordResponse,
    AuditRecordUpdate,
    Cursor,
)

_COLUMNS = tuple(audit_record.c)
# Built once: `insert().values(...)` per request is a visible share of a POST's CPU
# (`make bench`, row `audits-post`, CPU/request note).
_INSERT = insert(audit_record).returning(*_COLUMNS)
NEWEST_FIRST = (audit_record.c.created_at.desc(), audit_record.c.id.desc())
# Seed of `hashtextextended` for the advisory lock guarding one idempotency key.
_IDEMPOTENCY_LOCK_SEED = 0x6175646974
# Transaction-local settings the trail's trigger reads for an update's or delete's event.
_REQUEST_ID_SETTING = "audit.request_id"
_CLIENT_ID_SETTING = "audit.client_id"
_PURGE_BATCH = 10_000
# What an idempotent create returns, and replays from the key's stored response.
Created = TypeVar("Created", AuditRecordResponse, AuditRecordBatch)
_PURGE_MAX_BATCHES = 100


def _response(row: Row[Any]) -> AuditRecordResponse:
    return AuditRecordResponse.model_validate(row._mapping)


async def _insert_record(
    session: AsyncSession, data: AuditRecordCreate, request_id: str, client_id: str | None
) -> AuditRecordResponse:
    values = {"id": uuid7(), "request_id": request_id, "client_id": client_id, **data.model_dump()}
    return _response((await session.execute(_INSERT, values)).one())


async def create_audit(
    session: AsyncSession, data: AuditRecordCreate, request_id: str, client_id: str | None
) -> AuditRecordResponse:
    record = await _insert_record(session, data, request_id, client_id)
    await session.commit()
    return record


def fingerprint(data: BaseModel) -> str:
    canonical = json.dumps(
        data.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def create_audit_idempotent(
    session: AsyncSession,
    data: AuditRecordCreate,
    request_id: str,
    client_id: str | None,
    key: str,
    ttl: timedelta,
) -> tuple[AuditRecordResponse, bool]:
    """Create once per key; a repeat gets the first response back. Returns (record, replayed)."""
    create = partial(_insert_record, session, data, request_id, client_id)
    return await _create_once(session, data, key, ttl, create, AuditRecordResponse)


async def _create_once(
    session: AsyncSession,
    data: BaseModel,
    key: str,
    ttl: timedelta,
    create: Callable[[], Awaitable[Created]],
    created_type: type[Created],
) -> tuple[Created, bool]:
    """Run `create` once per key; a repeat gets the first response back.

    The key row and what `create` writes commit in one READ COMMITTED transaction
    (`session` must not have run a statement yet: it would be in autocommit mode). A
    transaction-scoped advisory lock on the key makes a concurrent repeat fail fast (409)
    instead of waiting, and either both exist or neither does, whichever replica served it.
    """
    await session.connection(execution_options={"isolation_level": "READ COMMITTED"})
    digest = fingerprint(data)
    lock = func.pg_try_advisory_xact_lock(func.hashtextextended(key, _IDEMPOTENCY_LOCK_SEED))
    if not await session.scalar(select(lock)):
        raise IdempotencyInProgress(
            "A request with this Idempotency-Key is still being processed; retry when it is done."
        )
    stored = (
        await session.execute(
            select(idempotency_key.c.fingerprint, idempotency_key.c.response).where(
                idempotency_key.c.key == key, idempotency_key.c.expires_at > func.now()
            )
        )
    ).one_or_none()
    if stored is not None:
        await session.rollback()
        if stored.fingerprint != digest:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used with a different request body."
            )
        return created_type.model_validate(stored.response), True

    created = await create()
    values = {
        "fingerprint": digest,
        "audit_id": created.items[0].id if isinstance(created, AuditRecordBatch) else created.id,
        "response": created.model_dump(mode="json"),
        "created_at": func.now(),
        "expires_at": func.now() + ttl,
    }
    # A row still there under this key has expired (the lookup above saw none alive).
    upsert = pg_insert(idempotency_key).values(key=key, **values)
    await session.execute(
        upsert.on_conflict_do_update(index_elements=[idempotency_key.c.key], set_=values)
    )
    await session.commit()
    return created, False


async def get_audit(session: AsyncSession, audit_id: UUID) -> AuditRecordResponse:
    row = (
        await session.execute(select(*_COLUMNS).where(audit_record.c.id == audit_id))
    ).one_or_none()
    if row is None:
        raise AuditNotFound(f"No audit record with id {audit_id}.")
    return _response(row)


def filter_conditions(params: AuditFilters) -> list[ColumnElement[bool]]:
    c = audit_record.c
    equal = {
        c.action: params.action,
        c.status: params.status,
        c.actor: params.actor,
        c.resource_type: params.resource_type,
        c.resource_id: params.resource_id,
    }
    conditions = [column == value for column, value in equal.items() if value is not None]
    if params.created_from is not None:
        conditions.append(c.created_at >= params.created_from)
    if params.created_to is not None:
        conditions.append(c.created_at <= params.created_to)
    return conditions


def listed_after(created_at: datetime, audit_id: UUID) -> ColumnElement[bool]:
    """Records after this position in listing order (newest first)."""
    # A row comparison is a single index range condition on (created_at, id).
    return tuple_(audit_record.c.created_at, audit_record.c.id) < tuple_(created_at, audit_id)


async def list_audits(session: AsyncSession, params: AuditListParams) -> AuditRecordPage:
    conditions = filter_conditions(params)
    page = select(*_COLUMNS).where(*conditions)
    if params.cursor is not None:
        page = page.where(listed_after(params.cursor.created_at, params.cursor.id))
    page = page.order_by(*NEWEST_FIRST).limit(params.limit + 1).offset(params.offset)
    rows = (await session.execute(page)).all()
    items = [_response(row) for row in rows[: params.limit]]
    next_cursor = None
    if len(rows) > params.limit:
        last = items[-1]
        next_cursor = Cursor(last.created_at, last.id).encode()
    total = None
    if params.include_total:
        count = select(func.count()).select_from(audit_record).where(*conditions)
        total = (await session.execute(count)).scalar_one()
    return AuditRecordPage(
        items=items,
        total=total,
        limit=params.limit,
        offset=params.offset,
        next_cursor=next_cursor,
    )


def _for_request(request_id: str, client_id: str | None) -> ColumnElement[bool]:
    """A condition that is always true and, as it is evaluated, tells the trail's trigger
    which request (and client) changes the row: the event gets them in the same round trip."""
    return func.concat(
        func.set_config(_REQUEST_ID_SETTING, request_id, True),
        func.set_config(_CLIENT_ID_SETTING, client_id or "", True),
    ).is_not(None)


async def update_audit(
    session: AsyncSession,
    audit_id: UUID,
    data: AuditRecordUpdate,
    request_id: str,
    client_id: str | None,
) -> AuditRecordResponse:
    c = audit_record.c
    # Strictly later than before even if the clock steps back or two updates share a tick.
    updated_at = func.greatest(func.now(), c.updated_at + timedelta(microseconds=1))
    statement = (
        update(audit_record)
        .where(c.id == audit_id, _for_request(request_id, client_id))
        .values(**data.model_dump(exclude_unset=True), updated_at=updated_at)
        .returning(*_COLUMNS)
    )
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        raise AuditNotFound(f"No audit record with id {audit_id}.")
    await session.commit()
    return _response(row)


async def delete_audit(
    session: AsyncSession, audit_id: UUID, request_id: str, client_id: str | None
) -> None:
    statement = delete(audit_record).where(
        audit_record.c.id == audit_id, _for_request(request_id, client_id)
    )
    deleted = (await session.execute(statement.returning(audit_record.c.id))).scalar_one_or_none()
    if deleted is None:
        raise AuditNotFound(f"No audit record with id {audit_id}.")
    await session.commit()


async def purge_expired_keys(engine: AsyncEngine) -> int:
    """Delete expired idempotency keys in bounded batches; returns how many went."""
    expired = (
        select(idempotency_key.c.key)
        .where(idempotency_key.c.expires_at <= func.now())
        .limit(_PURGE_BATCH)
        .with_for_update(skip_locked=True)
    )
    purged = 0
    for _ in range(_PURGE_MAX_BATCHES):
        async with engine.begin() as connection:
            result = await connection.execute(
                delete(idempotency_key).where(idempotency_key.c.key.in_(expired))
            )
        purged += result.rowcount
        if result.rowcount < _PURGE_BATCH:
            break
    return purged


# -- bulk ingest ----------------------------------------------------------------------------

# Many rows in one statement of constant text: one text array per column, unnested and
# cast to the column's type. PostgreSQL parses and plans it once per connection (a multi-row
# VALUES list would be a new statement of 11 parameters per row for every batch size), and
# the driver sends eleven arrays instead of binding thousands of parameters one by one.
_BATCH_COLUMNS = ("id", "request_id", "client_id", *AuditRecordCreate.model_fields)
_BATCH_ROWS = (
    func.unnest(*(cast(bindparam(name, type_=ARRAY(Text)), ARRAY(Text)) for name in _BATCH_COLUMNS))
    .table_valued(*_BATCH_COLUMNS)
    .render_derived()
)
_INSERT_MANY = (
    insert(audit_record)
    .from_select(
        list(_BATCH_COLUMNS),
        select(*(cast(_BATCH_ROWS.c[name], audit_record.c[name].type) for name in _BATCH_COLUMNS)),
    )
    .returning(*_COLUMNS)
)


_RESPONSES = TypeAdapter(list[AuditRecordResponse])


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, dict) else str(value)


async def _insert_batch(
    session: AsyncSession, batch: AuditBatchCreate, request_id: str, client_id: str | None
) -> AuditRecordBatch:
    # Ascending ids, so the newest-first listing (id breaks the tie of a shared created_at)
    # shows a batch as if its records had been posted one by one, and sorting the returned
    # rows by id restores the order given.
    ids = sorted(uuid7() for _ in batch.records)
    columns: dict[str, list[str | None]] = {name: [] for name in _BATCH_COLUMNS}
    for audit_id, record in zip(ids, batch.records, strict=True):
        values = {
            "id": audit_id,
            "request_id": request_id,
            "client_id": client_id,
            **record.model_dump(),
        }
        for name, value in values.items():
            columns[name].append(_as_text(value))
    rows = sorted((await session.execute(_INSERT_MANY, columns)).all(), key=lambda row: row.id)
    # One validation call for the whole list is cheaper than one per row.
    return AuditRecordBatch(items=_RESPONSES.validate_python([row._mapping for row in rows]))


async def create_audits(
    session: AsyncSession, batch: AuditBatchCreate, request_id: str, client_id: str | None
) -> AuditRecordBatch:
    """Store every record of `batch` or none, in one transaction."""
    await session.connection(execution_options={"isolation_level": "READ COMMITTED"})
    created = await _insert_batch(session, batch, request_id, client_id)
    await session.commit()
    return created


async def create_audits_idempotent(
    session: AsyncSession,
    batch: AuditBatchCreate,
    request_id: str,
    client_id: str | None,
    key: str,
    ttl: timedelta,
) -> tuple[AuditRecordBatch, bool]:
    """`create_audits` once per key, as `create_audit_idempotent`."""
    create = partial(_insert_batch, session, batch, request_id, client_id)
    return await _create_once(session, batch, key, ttl, create, AuditRecordBatch)
