"""Admission to the connection pool: first come, first served, and bounded by DB_POOL_TIMEOUT."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from audits_service.config import Settings
from audits_service.database import DatabaseUnavailable, Sessions, create_engine

POOL_TIMEOUT = 0.5


@pytest.fixture
async def sessions(audits_database_url: str) -> AsyncIterator[Sessions]:
    """One connection in all, so every other session has to wait for it."""
    settings = Settings(
        database_url=audits_database_url,
        db_pool_size=1,
        db_max_overflow=0,
        db_pool_timeout=POOL_TIMEOUT,
    )
    engine = create_engine(settings)
    yield Sessions(engine, settings)
    await engine.dispose()


async def test_a_waiting_request_is_not_overtaken_by_one_that_comes_back(
    sessions: Sessions,
) -> None:
    admitted: list[str] = []
    holder_done = asyncio.Event()

    async def use(name: str) -> None:
        async with sessions.open() as session:
            await session.execute(text("SELECT 1"))
            admitted.append(name)

    async def holder() -> None:
        async with sessions.open() as session:
            await session.execute(text("SELECT 1"))
            admitted.append("holder")
            waiter_task = asyncio.create_task(use("waiter"))
            await asyncio.sleep(0.05)  # the waiter is now queued for the connection
        # Back at once, without yielding to the loop first: it must queue behind the waiter.
        await use("holder again")
        await waiter_task
        holder_done.set()

    await asyncio.wait_for(holder(), timeout=10)

    assert holder_done.is_set()
    assert admitted == ["holder", "waiter", "holder again"]


async def test_no_free_connection_within_the_pool_timeout_is_database_unavailable(
    sessions: Sessions,
) -> None:
    async with sessions.open() as session:
        await session.execute(text("SELECT 1"))
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            async with sessions.open():
                pass
        waited = time.monotonic() - started

    assert POOL_TIMEOUT * 0.9 <= waited < POOL_TIMEOUT + 2.0
    async with sessions.open() as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
