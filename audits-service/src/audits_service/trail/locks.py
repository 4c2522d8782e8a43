"""Leader election for the background jobs: a PostgreSQL session advisory lock per job, so
exactly one replica runs each job at a time whatever the replica count. The lock belongs to
the connection: if the replica or its connection dies, PostgreSQL releases it."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import IntEnum

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.database import driver_connection


class JobLock(IntEnum):
    """Advisory lock keys ("audits" in ASCII, then the job)."""

    SEAL = 0x6175_6469_7473_0001
    RETENTION = 0x6175_6469_7473_0002
    IDEMPOTENCY_PURGE = 0x6175_6469_7473_0003


@asynccontextmanager
async def leader(engine: AsyncEngine, job: JobLock) -> AsyncIterator[asyncpg.Connection | None]:
    """A raw connection holding `job`'s lock, or None when another session holds it."""
    async with engine.connect() as connection:
        driver = await driver_connection(connection)
        if not await driver.fetchval("SELECT pg_try_advisory_lock($1)", int(job)):
            yield None
            return
        try:
            yield driver
        finally:
            await driver.execute("SELECT pg_advisory_unlock($1)", int(job))
