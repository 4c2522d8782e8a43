"""The sealer: hashes new events into the chain and seals them into checkpoints.

Writers never wait for it: an event only takes `seq` from a sequence. A sequence hands out
numbers before the transactions using them commit, so a committed event may still appear
below one already visible. The sealer therefore seals up to a *settled* point only: it reads
the sequence's last value S, then waits until every transaction that held a write lock on
`audit_event` at that moment has ended. Any number up to S is then either a committed event
or a gap that stays empty for ever (a rolled-back transaction), so no event can appear in a
sealed range later. When those transactions take too long, it seals the gapless run of
events after the last checkpoint, which needs no waiting.
"""

import asyncio
from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.trail.canonical import (
    EVENT_COLUMNS,
    GENESIS,
    SQL_TIME_FORMAT,
    chain,
    checkpoint_document,
    event_document,
)
from audits_service.trail.locks import JobLock, leader

# Events per checkpoint: bounds the sealer's memory and each sealing transaction.
CHECKPOINT_MAX_EVENTS = 10_000
# Events hashed between two yields to the event loop: hashing a whole checkpoint at once
# would hold up the service's requests for tens of milliseconds, each checkpoint of a backlog.
_HASH_SLICE = 1_000
# How long a round waits for in-flight writers before sealing only the gapless run.
SETTLE_TIMEOUT = 2.0
_SETTLE_POLL = 0.01

_WRITERS = """
SELECT coalesce(array_agg(virtualtransaction), '{}') FROM pg_locks
WHERE locktype = 'relation' AND relation = 'audit_event'::regclass
  AND mode = 'RowExclusiveLock' AND pid <> pg_backend_pid()
"""
_STILL_WRITING = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'relation' AND relation = 'audit_event'::regclass
  AND mode = 'RowExclusiveLock' AND virtualtransaction = ANY($1::text[])
"""
_LAST_CHECKPOINT = "SELECT id, last_seq, head, hash FROM audit_checkpoint ORDER BY id DESC LIMIT 1"
_NEW_EVENTS = f"""
SELECT {EVENT_COLUMNS} FROM audit_event e
WHERE e.seq > $1 AND e.seq <= $2 ORDER BY e.seq LIMIT {CHECKPOINT_MAX_EVENTS}
"""  # noqa: S608
_NOW = f"SELECT now(), to_char(now() AT TIME ZONE 'UTC', '{SQL_TIME_FORMAT}')"
_INSERT_HASHES = (
    "INSERT INTO audit_event_hash (seq, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])"
)
_INSERT_CHECKPOINT = """
INSERT INTO audit_checkpoint (id, first_seq, last_seq, events, head, prev_hash, hash, sealed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


@dataclass(frozen=True, slots=True)
class _Sealed:
    id: int
    last_seq: int
    head: bytes
    hash: bytes


_NOTHING_SEALED = _Sealed(id=0, last_seq=0, head=GENESIS, hash=GENESIS)


async def _settled_seq(connection: asyncpg.Connection) -> int | None:
    """A seq up to which no event can still appear, or None if writers did not finish."""
    last = await connection.fetchval(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('audit_event', 'seq'))"
    )
    writers = await connection.fetchval(_WRITERS)
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT
    while writers and await connection.fetchval(_STILL_WRITING, writers):
        if asyncio.get_running_loop().time() > deadline:
            return None
        await asyncio.sleep(_SETTLE_POLL)
    return int(last or 0)


def _gapless(rows: list[asyncpg.Record], after: int) -> list[asyncpg.Record]:
    run = []
    for row in rows:
        if row["seq"] != after + 1:
            break
        run.append(row)
        after = row["seq"]
    return run


async def _chained(head: bytes, rows: list[asyncpg.Record]) -> list[bytes]:
    """Each event's chain hash after `head`, in order, letting requests run between slices."""
    hashes = []
    for start in range(0, len(rows), _HASH_SLICE):
        for event in rows[start : start + _HASH_SLICE]:
            head = chain(head, event_document(event))
            hashes.append(head)
        await asyncio.sleep(0)
    return hashes


async def _seal_one(connection: asyncpg.Connection, settled: int | None) -> int:
    """Seal the next checkpoint's worth of events; returns how many were sealed."""
    async with connection.transaction():
        row = await connection.fetchrow(_LAST_CHECKPOINT)
        last = _Sealed(**dict(row)) if row is not None else _NOTHING_SEALED
        upper = settled if settled is not None else last.last_seq + CHECKPOINT_MAX_EVENTS
        rows = await connection.fetch(_NEW_EVENTS, last.last_seq, upper)
        if settled is None:
            rows = _gapless(rows, last.last_seq)
        if not rows:
            return 0
        hashes = await _chained(last.head, rows)
        head = hashes[-1]
        now = await connection.fetchrow(_NOW)
        assert now is not None
        sealed_at, sealed_at_text = now
        document = {
            "id": last.id + 1,
            "first_seq": rows[0]["seq"],
            "last_seq": rows[-1]["seq"],
            "events": len(rows),
            "head": head,
            "sealed_at": sealed_at_text,
        }
        checkpoint_hash = chain(last.hash, checkpoint_document(document))
        await connection.execute(_INSERT_HASHES, [event["seq"] for event in rows], hashes)
        await connection.execute(
            _INSERT_CHECKPOINT,
            document["id"],
            document["first_seq"],
            document["last_seq"],
            len(rows),
            head,
            last.hash,
            checkpoint_hash,
            sealed_at,
        )
    return len(rows)


async def seal(engine: AsyncEngine) -> int | None:
    """One sealing round: every settled event gets its hash and a checkpoint. Returns how
    many events were sealed, or None when another sealer holds the lock."""
    async with leader(engine, JobLock.SEAL) as connection:
        if connection is None:
            return None
        settled = await _settled_seq(connection)
        total = 0
        while sealed := await _seal_one(connection, settled):
            total += sealed
        return total
