"""`verify`: recompute every sealed event's hash and every checkpoint from the database.

One REPEATABLE READ snapshot, read in keyset pages (bounded memory at any size): the event
chain is walked checkpoint by checkpoint, then two set queries catch what a chain walk
cannot see (a hash left behind by a removed event, a record that differs from its last
event). The earliest problem by `seq` is reported.
Queries are module constants built from other constants (no input is ever formatted in).
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.database import driver_connection
from audits_service.trail.canonical import (
    EVENT_COLUMNS,
    GENESIS,
    SQL_TIME_FORMAT,
    chain,
    checkpoint_document,
    event_document,
)

PAGE = 10_000
# Seconds each verification query may take (the service's usual statement timeout is
# meant for requests, not for a pass over the whole trail).
QUERY_TIMEOUT = 300.0
# Memory of the set queries' joins (per operation; one verification at a time per call).
WORK_MEM = "64MB"

_CHECKPOINTS = f"""
SELECT id, first_seq, last_seq, events, head, prev_hash, hash,
       to_char(sealed_at AT TIME ZONE 'UTC', '{SQL_TIME_FORMAT}') AS sealed_at
FROM audit_checkpoint WHERE id > $1 ORDER BY id LIMIT {PAGE}
"""  # noqa: S608
_EVENTS = f"""
SELECT {EVENT_COLUMNS}, h.hash
FROM audit_event e LEFT JOIN audit_event_hash h ON h.seq = e.seq AND h.seq > $1
WHERE e.seq > $1 AND e.seq <= $2 ORDER BY e.seq LIMIT {PAGE}
"""  # noqa: S608
_HEAD = f"""
SELECT id, last_seq, head, to_char(sealed_at AT TIME ZONE 'UTC', '{SQL_TIME_FORMAT}')
FROM audit_checkpoint ORDER BY id DESC LIMIT 1
"""  # noqa: S608
_ORPHAN_HASH = """
SELECT min(h.seq) FROM audit_event_hash h
WHERE NOT EXISTS (SELECT FROM audit_event e WHERE e.seq = h.seq)
"""
_HASH_BEYOND_HEAD = "SELECT min(seq) FROM audit_event_hash WHERE seq > $1"
# A record must equal the state of its last event; a record whose last event removed it
# must be gone; a record must have events at all. The trigger writes a record and its event
# in one transaction, so equal `xmin`s prove them written together and the costly state
# comparison (as rows: time zones and key order do not matter) runs only for the others (a
# change made with the triggers off, a backfill, a restored dump).
_RECORD_MISMATCH = """
WITH last AS (SELECT record_id, max(seq) AS seq FROM audit_event GROUP BY record_id)
SELECT e.seq, coalesce(r.id, l.record_id)::text AS record_id,
  CASE WHEN l.seq IS NULL THEN 'record has no event'
       WHEN r.id IS NULL THEN 'record removed without an event'
       WHEN e.op IN ('delete', 'purge') THEN 'deleted record is present'
       ELSE 'record differs from its last event' END AS reason
FROM last l JOIN audit_event e ON e.seq = l.seq FULL JOIN audit_record r ON r.id = l.record_id
WHERE (r.id IS NULL AND e.op IN ('create', 'update'))
   OR l.record_id IS NULL
   OR (r.id IS NOT NULL AND (e.op IN ('delete', 'purge')
       OR (r.xmin <> e.xmin
           AND jsonb_populate_record(NULL::audit_record, e.state) IS DISTINCT FROM r)))
ORDER BY e.seq NULLS LAST LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str
    sealed_at: str | None
    checkpoint: int


@dataclass(frozen=True, slots=True)
class Break:
    seq: int | None
    reason: str
    record_id: str | None = None
    checkpoint: int | None = None


@dataclass(slots=True)
class Report:
    events_checked: int
    checkpoints_checked: int
    head: Head
    first_broken: Break | None


EMPTY_HEAD = Head(seq=0, hash=GENESIS.hex(), sealed_at=None, checkpoint=0)


async def read_head(connection: asyncpg.Connection) -> Head:
    row = await connection.fetchrow(_HEAD)
    if row is None:
        return EMPTY_HEAD
    return Head(seq=row[1], hash=bytes(row[2]).hex(), sealed_at=row[3], checkpoint=row[0])


async def _pages(
    connection: asyncpg.Connection, query: str, key: str, *bounds: int
) -> AsyncIterator[asyncpg.Record]:
    """Keyset pages of `query`; the next page is already requested while the caller works
    through the current one, so the server's work overlaps with ours."""

    def fetch(after: int) -> "asyncio.Task[list[asyncpg.Record]]":
        return asyncio.create_task(connection.fetch(query, after, *bounds, timeout=QUERY_TIMEOUT))

    rows = await fetch(0)
    while rows:
        following = fetch(rows[-1][key]) if len(rows) == PAGE else None
        await asyncio.sleep(0)  # let it send the query
        for row in rows:
            yield row
        rows = await following if following is not None else []


class _ChainWalk:
    """Walks events and checkpoints in step; stops at the first inconsistency."""

    def __init__(self) -> None:
        self.events = 0
        self.checkpoints = 0
        self.previous_event = GENESIS
        self.previous_checkpoint = GENESIS
        self.checkpoint: asyncpg.Record | None = None
        self.in_checkpoint = 0
        self.covered_to = 0

    def open(self, checkpoint: asyncpg.Record) -> Break | None:
        expected = chain(self.previous_checkpoint, checkpoint_document(checkpoint))
        problem = None
        if checkpoint["id"] != self.checkpoints + 1:
            problem = "checkpoint missing before this one"
        elif bytes(checkpoint["prev_hash"]) != self.previous_checkpoint:
            problem = "checkpoint does not chain to the one before"
        elif bytes(checkpoint["hash"]) != expected:
            problem = "checkpoint hash mismatch"
        if problem:
            return Break(seq=self.covered_to + 1, reason=problem, checkpoint=checkpoint["id"])
        self.checkpoint, self.in_checkpoint = checkpoint, 0
        self.previous_checkpoint = expected
        self.checkpoints += 1
        return None

    def close(self) -> Break | None:
        checkpoint = self.checkpoint
        assert checkpoint is not None
        self.covered_to = checkpoint["last_seq"]
        if self.in_checkpoint != checkpoint["events"] or self.previous_event != bytes(
            checkpoint["head"]
        ):
            return Break(
                seq=checkpoint["last_seq"],
                reason="events of the checkpoint missing or changed",
                checkpoint=checkpoint["id"],
            )
        return None

    def event(self, row: asyncpg.Record) -> Break | None:
        checkpoint = self.checkpoint
        assert checkpoint is not None
        seq = row["seq"]
        if self.in_checkpoint == 0 and seq != checkpoint["first_seq"]:
            return Break(
                seq=seq, reason="event outside every checkpoint", record_id=row["record_id"]
            )
        expected = chain(self.previous_event, event_document(row))
        if row["hash"] is None or bytes(row["hash"]) != expected:
            return Break(seq=seq, reason="event hash mismatch", record_id=row["record_id"])
        self.previous_event = expected
        self.in_checkpoint += 1
        self.events += 1
        return None


async def _walk(
    checkpoints: asyncpg.Connection, events: asyncpg.Connection, head: Head
) -> tuple[_ChainWalk, Break | None]:
    walk = _ChainWalk()
    pending_events = aiter(_pages(events, _EVENTS, "seq", head.seq))
    pending = await anext(pending_events, None)
    async for checkpoint in _pages(checkpoints, _CHECKPOINTS, "id"):
        if problem := walk.open(checkpoint):
            return walk, problem
        while pending is not None and pending["seq"] <= checkpoint["last_seq"]:
            if problem := walk.event(pending):
                return walk, problem
            pending = await anext(pending_events, None)
        if problem := walk.close():
            return walk, problem
    return walk, None


async def _set_checks(connection: asyncpg.Connection, head: Head) -> list[Break]:
    found = []
    orphan = await connection.fetchval(_ORPHAN_HASH, timeout=QUERY_TIMEOUT)
    if orphan is not None:
        found.append(Break(seq=orphan, reason="sealed event removed"))
    beyond = await connection.fetchval(_HASH_BEYOND_HEAD, head.seq, timeout=QUERY_TIMEOUT)
    if beyond is not None:
        found.append(Break(seq=beyond, reason="checkpoint of sealed events removed"))
    row = await connection.fetchrow(_RECORD_MISMATCH, timeout=QUERY_TIMEOUT)
    if row is not None:
        found.append(Break(seq=row["seq"], reason=row["reason"], record_id=row["record_id"]))
    return found


async def _since(connection: asyncpg.Connection, since_hash: bytes, head: Head) -> Break | None:
    known = await connection.fetchval(
        "SELECT last_seq FROM audit_checkpoint WHERE head = $1 ORDER BY id LIMIT 1", since_hash
    )
    if known is None:
        return Break(seq=head.seq + 1, reason="since_hash is not a head of this trail")
    return None


def _earliest(problems: list[Break]) -> Break | None:
    if not problems:
        return None
    return min(problems, key=lambda problem: (problem.seq is None, problem.seq or 0))


@asynccontextmanager
async def _reader(
    engine: AsyncEngine, snapshot: str | None
) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A read-only REPEATABLE READ transaction, on `snapshot` if given (the same view of
    the database as another reader's); yields the connection and its snapshot's id."""
    async with engine.connect() as sa_connection:
        connection = await driver_connection(sa_connection)
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            if snapshot is not None:
                await connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            await connection.execute(f"SET LOCAL statement_timeout = {int(QUERY_TIMEOUT * 1000)}")
            await connection.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
            yield connection, snapshot or await connection.fetchval("SELECT pg_export_snapshot()")


async def verify(engine: AsyncEngine, since_hash: bytes | None = None) -> Report:
    """Three connections on one snapshot: checkpoints, events, and the set queries, which
    run on the server while this process hashes."""
    async with AsyncExitStack() as stack:
        main, snapshot = await stack.enter_async_context(_reader(engine, None))
        events, _ = await stack.enter_async_context(_reader(engine, snapshot))
        sets, _ = await stack.enter_async_context(_reader(engine, snapshot))
        head = await read_head(main)
        set_checks = asyncio.create_task(_set_checks(sets, head))
        try:
            walk, broken = await _walk(main, events, head)
        except BaseException:
            set_checks.cancel()
            raise
        # On a tie the chain's own finding names the cause best: listed first.
        problems = ([broken] if broken else []) + await set_checks
        if since_hash is not None and (missing := await _since(main, since_hash, head)):
            problems.append(missing)
    return Report(
        events_checked=walk.events,
        checkpoints_checked=walk.checkpoints,
        head=head,
        first_broken=_earliest(problems),
    )
