"""The connection pool: first come, first served, bounded by DB_POOL_TIMEOUT, overflow
connections kept while the load needs them, and never in the way of a request that needs no
database."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncpg
import pytest
from alembic import command
from audits_testkit import AUDITS, alembic_config, app_client, record
from sqlalchemy import event, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from audits_service.config import Settings, normalise_database_url
from audits_service.database import FairQueuePool, create_engine
from audits_service.main import create_app
from testkit.checks import assert_problem

POOL_TIMEOUT = 0.5


def one_connection(database_url: str) -> Settings:
    """A pool of one connection, so that every other checkout has to wait for it."""
    return Settings(
        database_url=database_url,
        db_pool_size=1,
        db_max_overflow=0,
        db_pool_timeout=POOL_TIMEOUT,
        log_level="WARNING",
    )


@pytest.fixture
async def engine(audits_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(one_connection(audits_database_url))
    yield engine
    await engine.dispose()


async def test_a_waiting_checkout_is_not_overtaken_by_a_newcomer(engine: AsyncEngine) -> None:
    served: list[str] = []
    newcomers: list[asyncio.Task[None]] = []

    async def use(name: str) -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            served.append(name)

    def newcomer_arrives(*_: object) -> None:
        # Runs as the connection is being returned: the newcomer's first step is scheduled
        # before the waiter's wake-up, so it asks for the connection first. The stock pool
        # hands it over at once, and the waiter goes back to the end of the queue
        # (sqlalchemy#7679).
        if not newcomers:
            newcomers.append(asyncio.get_running_loop().create_task(use("newcomer")))

    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
        served.append("holder")
        waiter = asyncio.create_task(use("waiter"))
        await asyncio.sleep(0.05)  # the waiter is now queued for the connection
        event.listen(engine.sync_engine.pool, "checkin", newcomer_arrives)
    await asyncio.wait_for(asyncio.gather(waiter, *newcomers), timeout=10)

    assert served == ["holder", "waiter", "newcomer"]


async def test_no_free_connection_within_the_pool_timeout_is_a_pool_timeout(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError):
            async with engine.connect():
                pass
        waited = time.monotonic() - started

    assert POOL_TIMEOUT * 0.9 <= waited < POOL_TIMEOUT + 1.0
    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1


async def test_overflow_connections_stay_open_while_the_load_needs_them(
    audits_database_url: str,
) -> None:
    engine = create_async_engine(
        normalise_database_url(audits_database_url),
        poolclass=FairQueuePool,
        pool_size=1,
        max_overflow=2,
        overflow_linger=0.5,
        isolation_level="AUTOCOMMIT",
    )
    pool = engine.sync_engine.pool
    assert isinstance(pool, FairQueuePool)
    opened: list[object] = []
    event.listen(pool, "connect", lambda connection, _record: opened.append(connection))

    async def use(count: int) -> None:
        async with AsyncExitStack() as stack:
            for _ in range(count):
                connection = await stack.enter_async_context(engine.connect())
                await connection.execute(text("SELECT 1"))

    try:
        for _ in range(3):  # a load of three, beyond the pool's one
            await use(3)
        assert len(opened) == 3
        assert (pool.checkedin(), pool.overflow()) == (3, 2)

        await asyncio.sleep(0.6)  # no more than one in use for longer than the linger
        for _ in range(3):
            await use(1)
        assert (pool.checkedin(), pool.overflow()) == (1, 0)
        assert len(opened) == 3
    finally:
        await engine.dispose()
    recreated = engine.sync_engine.pool
    assert isinstance(recreated, FairQueuePool)
    assert (recreated.size(), recreated.overflow()) == (1, -1)


async def test_with_every_connection_busy_invalid_input_is_422_at_once_and_reads_wait(
    fresh_database_url: str,
) -> None:
    # Alembic's env runs its own event loop.
    await asyncio.to_thread(command.upgrade, alembic_config(fresh_database_url), "head")
    # Another client locks the table: a read then holds the app's only connection.
    blocker = await asyncpg.connect(fresh_database_url)
    try:
        async with app_client(create_app(one_connection(fresh_database_url))) as client:
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute("LOCK TABLE audit_record IN ACCESS EXCLUSIVE MODE")
            read = asyncio.create_task(client.get(AUDITS))
            await asyncio.sleep(0.2)

            started = time.monotonic()
            invalid = await client.post(AUDITS, json=record(action="fly"))
            refused_in = time.monotonic() - started
            waiting = await client.get(AUDITS)

            await lock.rollback()
            assert (await read).status_code == 200
    finally:
        await blocker.close()

    assert_problem(invalid, 422, "validation_error")
    assert refused_in < POOL_TIMEOUT / 2
    assert_problem(waiting, 503, "database_unavailable")


# Pages read by asyncpg itself, not through SQLAlchemy's execution: a list page, a record's
# history, the whole trail.
_DRIVER_READ_PAGES = ["list", "history", "events"]


@pytest.mark.parametrize("page_kind", _DRIVER_READ_PAGES)
async def test_a_page_on_a_connection_the_server_closed_is_503_and_not_pooled_again(
    fresh_database_url: str, page_kind: str
) -> None:
    """Within the second after its return no ping checks a connection: one the server closed
    meanwhile fails the next page as a 503, and is closed instead of pooled again, so the
    page after it is served on a new connection."""
    await asyncio.to_thread(command.upgrade, alembic_config(fresh_database_url), "head")
    settings = one_connection(fresh_database_url).model_copy(update={"db_pool_timeout": 3.0})
    async with app_client(create_app(settings)) as client:
        created = await client.post(AUDITS, json=record())
        assert created.status_code == 201
        url, query = {
            "list": (AUDITS, {"include_total": "false"}),
            "history": (f"{AUDITS}/{created.json()['id']}/history", {}),
            "events": (f"{AUDITS}/events", {}),
        }[page_kind]
        admin = await asyncpg.connect(fresh_database_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert_problem(await client.get(url, params=query), 503, "database_unavailable")
        page = await client.get(url, params=query)
    assert page.status_code == 200
    assert len(page.json()["items"]) == 1
