"""Audit records in PostgreSQL: one SQL statement per operation on the hot paths.

Every operation runs SQLAlchemy Core on a connection of its own, checked out for just that
operation (the engine is in autocommit mode; the idempotent and batch creates open a READ
COMMITTED transaction). Writes use `INSERT/UPDATE/DELETE … RETURNING`, so a record is
written and read back in one round trip, and responses are JSON rendered straight from the
returned rows (`schemas.render`), never through a model instance per row. A list page's
rows, the hottest read, come from asyncpg itself (`database.fetch_rows`), without
SQLAlchemy's execution and row processing.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, partial
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel
from sqlalchemy import (
    ColumnElement,
    Text,
    and_,
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
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Update

from audits_service.audits.exceptions import (
    AuditNotFound,
    IdempotencyInProgress,
    IdempotencyKeyReused,
)
from audits_service.audits.models import audit_record, idempotency_key, uuid7
from audits_service.audits.schemas import (
    RECORD_FIELDS,
    AuditBatchCreate,
    AuditFilters,
    AuditListParams,
    AuditRecordCreate,
    AuditRecordUpdate,
    Cursor,
    record_values,
    render,
)
from audits_service.database import fetch_rows

# The response's fields in its order: a row is the record as the API shows it.
_COLUMNS = tuple(audit_record.c[name] for name in RECORD_FIELDS)
# Built once: `insert().values(...)` per request is a visible share of a POST's CPU.
_INSERT = insert(audit_record).returning(*_COLUMNS)
_BY_ID = select(*_COLUMNS).where(audit_record.c.id == bindparam("audit_id"))
# A page's rows carry their ids as text, as the response has them: asyncpg's own UUID type is
# not one orjson knows, so each would cost the page's encoding a call back into Python.
_PAGE_COLUMNS = tuple(
    cast(column, Text).label(column.key) if column.key == "id" else column for column in _COLUMNS
)
NEWEST_FIRST = (audit_record.c.created_at.desc(), audit_record.c.id.desc())
# Seed of `hashtextextended` for the advisory lock guarding one idempotency key.
_IDEMPOTENCY_LOCK_SEED = 0x6175646974
# Transaction-local settings the trail's trigger reads for an update's or delete's event.
_REQUEST_ID_SETTING = "audit.request_id"
_CLIENT_ID_SETTING = "audit.client_id"
_PURGE_BATCH = 10_000
_PURGE_MAX_BATCHES = 100


@dataclass(frozen=True, slots=True)
class Created:
    """What a create answers: the JSON body, and the id the idempotency key points at."""

    body: bytes
    audit_id: UUID


async def _insert_record(
    connection: AsyncConnection, data: AuditRecordCreate, request_id: str, client_id: str | None
) -> Created:
    values = {"id": uuid7(), "request_id": request_id, "client_id": client_id, **data.model_dump()}
    row = (await connection.execute(_INSERT, values)).one()
    return Created(render(record_values(row)), values["id"])


async def create_audit(
    engine: AsyncEngine, data: AuditRecordCreate, request_id: str, client_id: str | None
) -> Created:
    async with engine.connect() as connection:
        return await _insert_record(connection, data, request_id, client_id)


def fingerprint(data: BaseModel) -> str:
    canonical = json.dumps(
        data.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def create_audit_idempotent(
    engine: AsyncEngine,
    data: AuditRecordCreate,
    request_id: str,
    client_id: str | None,
    key: str,
    ttl: timedelta,
) -> tuple[Created, bool]:
    """Create once per key; a repeat gets the first response back. Returns (created, replayed)."""
    create = partial(_insert_record, data=data, request_id=request_id, client_id=client_id)
    return await _create_once(engine, data, IdempotencyScope(client_id or "", key), ttl, create)


@dataclass(frozen=True, slots=True)
class IdempotencyScope:
    """An `Idempotency-Key` as the client that sent it owns it (`client_id` empty while
    access control is off)."""

    client_id: str
    key: str

    def lock(self) -> ColumnElement[bool]:
        """Try the transaction-scoped advisory lock of this client's key."""
        # A header value cannot hold a newline, so the two parts cannot run into each other.
        name = f"{self.client_id}\n{self.key}" if self.client_id else self.key
        return func.pg_try_advisory_xact_lock(func.hashtextextended(name, _IDEMPOTENCY_LOCK_SEED))

    def row(self) -> ColumnElement[bool]:
        return and_(
            idempotency_key.c.client_id == self.client_id, idempotency_key.c.key == self.key
        )


async def _create_once(
    engine: AsyncEngine,
    data: BaseModel,
    scope: IdempotencyScope,
    ttl: timedelta,
    create: Callable[[AsyncConnection], Awaitable[Created]],
) -> tuple[Created, bool]:
    """Run `create` once per client and key; a repeat gets the first response back.

    The key row and what `create` writes commit in one READ COMMITTED transaction. A
    transaction-scoped advisory lock on the key makes a concurrent repeat fail fast (409)
    instead of waiting, and either both exist or neither does, whichever replica served it.
    """
    digest = fingerprint(data)
    async with engine.connect() as autocommit:
        connection = await autocommit.execution_options(isolation_level="READ COMMITTED")
        async with connection.begin():
            if not await connection.scalar(select(scope.lock())):
                raise IdempotencyInProgress(
                    "A request with this Idempotency-Key is still being processed; "
                    "retry when it is done."
                )
            stored = (
                await connection.execute(
                    select(
                        idempotency_key.c.fingerprint,
                        idempotency_key.c.audit_id,
                        idempotency_key.c.response,
                    ).where(scope.row(), idempotency_key.c.expires_at > func.now())
                )
            ).one_or_none()
            if stored is not None:
                if stored.fingerprint != digest:
                    raise IdempotencyKeyReused(
                        "This Idempotency-Key was used with a different request body."
                    )
                return Created(render(stored.response), stored.audit_id), True
            created = await create(connection)
            values = {
                "fingerprint": digest,
                "audit_id": created.audit_id,
                "response": orjson.loads(created.body),
                "created_at": func.now(),
                "expires_at": func.now() + ttl,
            }
            # A row still there under this key has expired (the lookup above saw none alive).
            upsert = pg_insert(idempotency_key).values(
                client_id=scope.client_id, key=scope.key, **values
            )
            await connection.execute(
                upsert.on_conflict_do_update(
                    index_elements=[idempotency_key.c.client_id, idempotency_key.c.key], set_=values
                )
            )
    return created, False


async def get_audit(engine: AsyncEngine, audit_id: UUID) -> bytes:
    async with engine.connect() as connection:
        row = (await connection.execute(_BY_ID, {"audit_id": audit_id})).one_or_none()
    if row is None:
        raise AuditNotFound(f"No audit record with id {audit_id}.")
    return render(record_values(row))


def filter_values(params: AuditFilters) -> dict[str, Any]:
    """The filters `params` sets, by name: the bind parameters of `filter_conditions`."""
    values = ((name, getattr(params, name)) for name in AuditFilters.model_fields)
    return {name: value for name, value in values if value is not None}


@cache
def filter_conditions(names: frozenset[str]) -> tuple[ColumnElement[bool], ...]:
    """The conditions of these filters on bind parameters named as the filters, built once
    per set of them: building and hashing a statement per request is most of a page's
    CPU (see `make bench`, row `audits-reads`)."""
    c = audit_record.c
    equal = (c.action, c.status, c.actor, c.resource_type, c.resource_id)
    conditions = [column == bindparam(column.key) for column in equal if column.key in names]
    if "created_from" in names:
        conditions.append(c.created_at >= bindparam("created_from"))
    if "created_to" in names:
        conditions.append(c.created_at <= bindparam("created_to"))
    return tuple(conditions)


def listed_after(
    created_at: datetime | ColumnElement[datetime], audit_id: UUID | ColumnElement[UUID]
) -> ColumnElement[bool]:
    """Records after this position in listing order (newest first)."""
    # A row comparison is a single index range condition on (created_at, id).
    return tuple_(audit_record.c.created_at, audit_record.c.id) < tuple_(created_at, audit_id)


@cache
def _page(filters: frozenset[str], cursor: bool) -> Select[Any]:
    """A page's query for these filters, with or without a cursor, built once."""
    c = audit_record.c
    page = select(*_PAGE_COLUMNS).where(*filter_conditions(filters))
    if cursor:
        after_created_at = bindparam("after_created_at", type_=c.created_at.type)
        page = page.where(listed_after(after_created_at, bindparam("after_id", type_=c.id.type)))
    return page.order_by(*NEWEST_FIRST).limit(bindparam("limit")).offset(bindparam("offset"))


@cache
def _page_text(
    dialect: Dialect, filters: frozenset[str], cursor: bool
) -> tuple[str, tuple[str, ...]]:
    """`_page` as the driver's text, and the names of its parameters in order."""
    compiled = _page(filters, cursor).compile(dialect=dialect)
    return compiled.string, tuple(compiled.positiontup or ())


async def list_audits(engine: AsyncEngine, params: AuditListParams) -> bytes:
    """One page as the JSON of `AuditRecordPage`. The page's rows are read by the driver:
    their values (the address as text by `host()`) are already the response's."""
    filters = filter_values(params)
    names = frozenset(filters)
    values = {**filters, "limit": params.limit + 1, "offset": params.offset}
    if params.cursor is not None:
        values.update(after_created_at=params.cursor.created_at, after_id=params.cursor.id)
    page, order = _page_text(engine.dialect, names, params.cursor is not None)
    total = None
    # Closed in this task, not by `async with`, which closes in a task of its own (a visible
    # share of a page's CPU). Giving an autocommit connection back never waits, so no
    # cancellation can cut the close short.
    connection = await engine.connect()
    try:
        rows = await fetch_rows(connection, page, *(values[name] for name in order))
        if params.include_total:
            count = select(func.count()).select_from(audit_record).where(*filter_conditions(names))
            total = (await connection.execute(count, filters)).scalar_one()
    finally:
        await connection.close()
    items = [record_values(row) for row in rows[: params.limit]]
    next_cursor = None
    if len(rows) > params.limit:
        last = rows[params.limit - 1]
        next_cursor = Cursor(last["created_at"], UUID(last["id"])).encode()
    return render(
        {
            "items": items,
            "total": total,
            "limit": params.limit,
            "offset": params.offset,
            "next_cursor": next_cursor,
        }
    )


# A condition that is always true and, as it is evaluated, tells the trail's trigger which
# request (and client) changes the row: the event gets them in the same round trip.
_FOR_REQUEST = func.concat(
    func.set_config(_REQUEST_ID_SETTING, bindparam("event_request_id", type_=Text), True),
    func.set_config(_CLIENT_ID_SETTING, bindparam("event_client_id", type_=Text), True),
).is_not(None)
_CHANGED = (audit_record.c.id == bindparam("audit_id"), _FOR_REQUEST)
_DELETE = delete(audit_record).where(*_CHANGED).returning(audit_record.c.id)


def _change(audit_id: UUID, request_id: str, client_id: str | None) -> dict[str, Any]:
    return {
        "audit_id": audit_id,
        "event_request_id": request_id,
        "event_client_id": client_id or "",
    }


@cache
def _update(fields: frozenset[str]) -> Update:
    """The update of these fields (one statement per set of them: at most 2⁹), built once,
    as building and hashing a statement per request is a visible share of a PUT's CPU."""
    c = audit_record.c
    # Strictly later than before even if the clock steps back or two updates share a tick.
    updated_at = func.greatest(func.now(), c.updated_at + timedelta(microseconds=1))
    values = {name: bindparam(f"new_{name}", type_=c[name].type) for name in sorted(fields)}
    return (
        update(audit_record)
        .where(*_CHANGED)
        .values(**values, updated_at=updated_at)
        .returning(*_COLUMNS)
    )


async def update_audit(
    engine: AsyncEngine,
    audit_id: UUID,
    data: AuditRecordUpdate,
    request_id: str,
    client_id: str | None,
) -> bytes:
    changes = data.model_dump(exclude_unset=True)
    params = _change(audit_id, request_id, client_id)
    params.update((f"new_{name}", value) for name, value in changes.items())
    async with engine.connect() as connection:
        row = (await connection.execute(_update(frozenset(changes)), params)).one_or_none()
    if row is None:
        raise AuditNotFound(f"No audit record with id {audit_id}.")
    return render(record_values(row))


async def delete_audit(
    engine: AsyncEngine, audit_id: UUID, request_id: str, client_id: str | None
) -> None:
    async with engine.connect() as connection:
        result = await connection.execute(_DELETE, _change(audit_id, request_id, client_id))
        deleted = result.scalar_one_or_none()
    if deleted is None:
        raise AuditNotFound(f"No audit record with id {audit_id}.")


async def purge_expired_keys(engine: AsyncEngine) -> int:
    """Delete expired idempotency keys in bounded batches; returns how many went."""
    expired = (
        select(idempotency_key.c.client_id, idempotency_key.c.key)
        .where(idempotency_key.c.expires_at <= func.now())
        .limit(_PURGE_BATCH)
        .with_for_update(skip_locked=True)
    )
    purged = 0
    for _ in range(_PURGE_MAX_BATCHES):
        async with engine.begin() as connection:
            result = await connection.execute(
                delete(idempotency_key).where(
                    tuple_(idempotency_key.c.client_id, idempotency_key.c.key).in_(expired)
                )
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


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, dict) else str(value)


async def _insert_batch(
    connection: AsyncConnection, batch: AuditBatchCreate, request_id: str, client_id: str | None
) -> Created:
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
    rows = sorted((await connection.execute(_INSERT_MANY, columns)).all(), key=lambda row: row.id)
    return Created(render({"items": [record_values(row) for row in rows]}), ids[0])


async def create_audits(
    engine: AsyncEngine, batch: AuditBatchCreate, request_id: str, client_id: str | None
) -> Created:
    """Store every record of `batch` or none, in one transaction."""
    async with engine.connect() as autocommit:
        connection = await autocommit.execution_options(isolation_level="READ COMMITTED")
        async with connection.begin():
            return await _insert_batch(connection, batch, request_id, client_id)


async def create_audits_idempotent(
    engine: AsyncEngine,
    batch: AuditBatchCreate,
    request_id: str,
    client_id: str | None,
    key: str,
    ttl: timedelta,
) -> tuple[Created, bool]:
    """`create_audits` once per key, as `create_audit_idempotent`."""
    create = partial(_insert_batch, batch=batch, request_id=request_id, client_id=client_id)
    return await _create_once(engine, batch, IdempotencyScope(client_id or "", key), ttl, create)
