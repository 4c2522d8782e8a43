"""The background jobs every replica runs; each takes its advisory lock first, so whatever
the replica count exactly one sealer, one retention purger and one key purger is at work."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.audits.service import purge_expired_keys
from audits_service.config import Settings
from audits_service.trail.locks import JobLock, leader
from audits_service.trail.retention import purge_expired_records
from audits_service.trail.sealing import seal

# Seconds between runs of the idempotency-key purge and of the retention purge.
KEY_PURGE_INTERVAL = 600.0
RETENTION_INTERVAL = 60.0


async def _every(name: str, interval: float, job: Callable[[], Awaitable[int | None]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            done = await job()
        except Exception as exc:  # the database may be down; try again next round
            logger.warning("{} failed: {}", name, type(exc).__name__)
        else:
            if done:
                logger.info(name, count=done)


async def purge_keys_as_leader(engine: AsyncEngine) -> int | None:
    """Purge expired idempotency keys unless another replica is; None when it is."""
    async with leader(engine, JobLock.IDEMPOTENCY_PURGE) as lock:
        if lock is None:
            return None
        return await purge_expired_keys(engine)


@asynccontextmanager
async def background_jobs(engine: AsyncEngine, settings: Settings) -> AsyncIterator[None]:
    jobs = [
        _every("events sealed", settings.audit_seal_interval, lambda: seal(engine)),
        _every("idempotency keys purged", KEY_PURGE_INTERVAL, lambda: purge_keys_as_leader(engine)),
    ]
    days = settings.audit_retention_days
    if days is not None:
        jobs.append(
            _every(
                "records purged (retention)",
                RETENTION_INTERVAL,
                lambda: purge_expired_records(engine, days),
            )
        )
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
