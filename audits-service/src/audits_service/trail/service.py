"""Reading the trail: a record's history, the head, verification."""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg
import orjson
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.audits.exceptions import AuditNotFound
from audits_service.database import (
    DatabaseUnavailable,
    driver_connection,
    invalidated_if_dead,
    is_unavailable,
)
from audits_service.streaming import ClosingStreamingResponse, StreamInterrupted
from audits_service.trail import verification
from audits_service.trail.canonical import EVENT_COLUMNS
from audits_service.trail.schemas import (
    AuditEventResponse,
    AuditHistory,
    BrokenAt,
    TrailHead,
    VerifyReport,
)

# Longest silence of a verify response: well under any proxy's wait for the next byte.
KEEPALIVE_S = 1.0

_HISTORY = f"""
SELECT {EVENT_COLUMNS}, h.hash FROM audit_event e LEFT JOIN audit_event_hash h USING (seq)
WHERE e.record_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3
"""  # noqa: S608
_ALL_EVENTS = f"""
SELECT {EVENT_COLUMNS}, h.hash
FROM audit_event e LEFT JOIN audit_event_hash h ON h.seq = e.seq AND h.seq > $1
WHERE e.seq > $1 ORDER BY e.seq LIMIT $2
"""  # noqa: S608


@asynccontextmanager
async def _driver(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection's asyncpg driver; database failures become `DatabaseUnavailable`,
    and a connection found dead is not pooled again."""
    try:
        async with engine.connect() as connection:
            driver = await driver_connection(connection)
            try:
                yield driver
            except Exception as exc:
                if await invalidated_if_dead(connection, driver, exc):
                    raise DatabaseUnavailable from exc
                raise
    except Exception as exc:
        if is_unavailable(exc):
            raise DatabaseUnavailable from exc
        raise


def _event(row: asyncpg.Record) -> AuditEventResponse:
    return AuditEventResponse(
        seq=row["seq"],
        record_id=row["record_id"],
        op=row["op"],
        at=row["at"],
        request_id=row["request_id"],
        client_id=row["client_id"],
        state=orjson.loads(row["state_json"]),
        hash=None if row["hash"] is None else bytes(row["hash"]).hex(),
    )


def _page(rows: list[asyncpg.Record], limit: int) -> AuditHistory:
    items = [_event(row) for row in rows[:limit]]
    next_after = items[-1].seq if len(rows) > limit else None
    return AuditHistory(items=items, next_after=next_after)


async def history(engine: AsyncEngine, record_id: UUID, after: int, limit: int) -> AuditHistory:
    async with _driver(engine) as connection:
        rows = await connection.fetch(_HISTORY, record_id, after, limit + 1)
    if not rows and after == 0:
        raise AuditNotFound(f"No audit record with id {record_id} has ever existed.")
    return _page(rows, limit)


async def events(engine: AsyncEngine, after: int, limit: int) -> AuditHistory:
    async with _driver(engine) as connection:
        return _page(await connection.fetch(_ALL_EVENTS, after, limit + 1), limit)


def _head(head: verification.Head) -> TrailHead:
    return TrailHead(seq=head.seq, hash=head.hash, sealed_at=head.sealed_at)


async def head(engine: AsyncEngine) -> TrailHead:
    async with _driver(engine) as connection:
        return _head(await verification.read_head(connection))


async def verify_answer(
    engine: AsyncEngine, since_hash: str | None
) -> VerifyReport | ClosingStreamingResponse:
    """The report itself when verification is done within `KEEPALIVE_S`; otherwise a
    streamed 200 that sends one space every `KEEPALIVE_S` while it runs, then the report.

    Verifying millions of events takes longer than a proxy waits for a silent upstream
    (the gateway's `AUDITS_TIMEOUT` bounds each wait for the next byte); JSON allows
    whitespace before a value, so the padded body is still just the report. A failure once
    the padding has started (the database gone) cuts the body short instead of a 503."""
    work = asyncio.ensure_future(verify(engine, since_hash))
    try:
        await asyncio.wait({work}, timeout=KEEPALIVE_S)
    except BaseException:
        work.cancel()
        raise
    if work.done():
        return work.result()
    return ClosingStreamingResponse(
        _padded(work), media_type="application/json", headers={"Cache-Control": "no-store"}
    )


async def _padded(work: "asyncio.Future[VerifyReport]") -> AsyncGenerator[bytes, None]:
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=KEEPALIVE_S)
            if not work.done():
                yield b" "
        try:
            report = work.result()
        except Exception as exc:
            logger.opt(exception=exc).warning("verify failed after its first byte")
            raise StreamInterrupted from exc
        yield report.model_dump_json().encode()
    finally:
        work.cancel()


async def verify(engine: AsyncEngine, since_hash: str | None) -> VerifyReport:
    try:
        report = await verification.verify(
            engine, bytes.fromhex(since_hash) if since_hash else None
        )
    except Exception as exc:
        if is_unavailable(exc):
            raise DatabaseUnavailable from exc
        raise
    broken = report.first_broken
    return VerifyReport(
        status="intact" if broken is None else "broken",
        events_checked=report.events_checked,
        checkpoints_checked=report.checkpoints_checked,
        head=_head(report.head),
        first_broken=None
        if broken is None
        else BrokenAt(
            seq=broken.seq,
            reason=broken.reason,
            record_id=broken.record_id,
            checkpoint=broken.checkpoint,
        ),
    )
