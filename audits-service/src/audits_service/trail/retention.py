"""Retention: records older than AUDIT_RETENTION_DAYS are purged in bounded batches.

Each batch is its own short transaction deleting at most `PURGE_BATCH` rows chosen with
`FOR UPDATE SKIP LOCKED`, so writers never wait for the purge and a record being updated
is simply taken by a later batch. After each batch the purge pauses for as long as the batch
took: every batch writes a burst of WAL (the deletes and their events), and a live write's
commit has to flush whatever WAL precedes it, so an unpaced purge would stretch every commit
for as long as it runs. The trigger writes a `purge` event for every row (the
transaction-local setting `audit.purge` tells it apart from a DELETE request), so the
trail stays verifiable. One purger at a time, across replicas: `JobLock.RETENTION`.
"""

import asyncio
import time
from uuid import uuid4

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.trail.locks import JobLock, leader

PURGE_BATCH = 1_000
# Batches per run; the next run continues where this one stopped.
PURGE_MAX_BATCHES = 10_000


async def _purge_batch(connection: asyncpg.Connection, days: int, run: str) -> int:
    async with connection.transaction():
        # Set first, in the transaction: the trigger of every deleted row reads them.
        await connection.execute(_MARK_PURGE, run)
        status = await connection.execute(_PURGE_BATCH_SQL, days, PURGE_BATCH)
    return int(status.split()[-1])


_MARK_PURGE = (
    "SELECT set_config('audit.purge', 'on', true), set_config('audit.request_id', $1, true)"
)
_PURGE_BATCH_SQL = """
DELETE FROM audit_record WHERE id IN (
  SELECT id FROM audit_record WHERE created_at < now() - make_interval(days => $1)
  ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
)
"""


async def purge_expired_records(engine: AsyncEngine, days: int) -> int | None:
    """Purge records older than `days`; returns how many, or None when another replica is
    purging. The purge events carry `request_id` `retention-<uuid>`, one per run."""
    async with leader(engine, JobLock.RETENTION) as connection:
        if connection is None:
            return None
        run = f"retention-{uuid4()}"
        purged = 0
        for _ in range(PURGE_MAX_BATCHES):
            started = time.perf_counter()
            batch = await _purge_batch(connection, days, run)
            purged += batch
            if batch < PURGE_BATCH:
                break
            await asyncio.sleep(time.perf_counter() - started)
        return purged
