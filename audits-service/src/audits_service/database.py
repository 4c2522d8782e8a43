"""Engine, sessions and the mapping of database failures to `503 database_unavailable`."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

import asyncpg
from asyncpg import PostgresError
from fastapi import Depends, Request
from sqlalchemy import MetaData
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util import await_only

from audits_service.config import Settings
from audits_service.metrics import POOL_IN_USE, POOL_LIMIT, POOL_TIMEOUTS, POOL_WAIT
from servicekit import ServiceError

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLSTATE classes meaning "the server cannot serve you now", not "your statement is wrong":
# 08 connection exception, 53 insufficient resources, 57 operator intervention (shutdown,
# statement_timeout), 58 system error.
_UNAVAILABLE_SQLSTATE_CLASSES: Final = frozenset({"08", "53", "57", "58"})


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DatabaseUnavailable(ServiceError):
    status = 503
    code = "database_unavailable"
    title = "Database unavailable"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(
            detail or "The database cannot be reached; retry later.", headers={"Retry-After": "1"}
        )


class MigrationsPending(ServiceError):
    """Readiness while the database has no schema yet."""

    status = 503
    code = "migrations_pending"
    title = "Migrations pending"


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database is down, unreachable or too slow to answer."""
    # OSError covers refused connections and (asyncio) timeouts.
    if isinstance(exc, PoolTimeoutError | OperationalError | InterfaceError | OSError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        return exc.orig is not None and is_unavailable(exc.orig.__cause__ or exc.orig)
    if isinstance(exc, PostgresError):
        return (exc.sqlstate or "")[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    return False


class FairQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's async pool, handing out connections first come, first served.

    The stock pool gives a returned connection to whichever task asks next, so a request
    already waiting can be overtaken again and again (sqlalchemy#7679), which is a tail of
    seconds at a few dozen requests in flight (`make bench`, row `audits-get`, p99; and
    `test_audits_pool.py`, which the stock pool fails). Every checkout here first
    takes a slot of a FIFO semaphore as large as the pool (`pool_size + max_overflow`),
    within the pool timeout, and gives it back with the connection; holding a slot, the
    stock pool always has a connection to give (or may open one) and never waits.
    """

    def __init__(self, creator: Any, pool_size: int = 5, max_overflow: int = 10, **kw: Any) -> None:
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow, **kw)
        self._admission = asyncio.Semaphore(pool_size + max_overflow)
        POOL_LIMIT.set(pool_size + max_overflow)

    async def _admit(self) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                await self._admission.acquire()
        except TimeoutError:
            POOL_TIMEOUTS.inc()
            raise PoolTimeoutError(
                f"No connection became free within {self._timeout:g} s"
            ) from None
        finally:
            POOL_WAIT.observe(time.perf_counter() - started)

    def _do_get(self) -> ConnectionPoolEntry:
        await_only(self._admit())
        try:
            entry = super()._do_get()
        except BaseException:
            self._admission.release()
            raise
        POOL_IN_USE.inc()
        return entry

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            POOL_IN_USE.dec()
            self._admission.release()


def create_engine(settings: Settings) -> AsyncEngine:
    timeout = settings.db_command_timeout
    return create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_pre_ping=True,
        poolclass=FairQueuePool,
        # Autocommit unless a session asks for a transaction: a single statement then
        # needs no BEGIN/COMMIT, and the pre-ping is one round trip instead of three.
        isolation_level="AUTOCOMMIT",
        connect_args={
            "timeout": settings.db_pool_timeout,
            "command_timeout": timeout,
            "server_settings": {
                "application_name": "audits-service",
                "statement_timeout": str(int(timeout * 1000)),
            },
        },
    )


async def driver_connection(connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `connection`, for bulk reads that skip SQLAlchemy's
    row processing and for session-level advisory locks."""
    raw = await connection.get_raw_connection()
    driver: asyncpg.Connection | None = raw.driver_connection
    assert driver is not None, "a pooled connection always has its driver connection"
    return driver


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session in autocommit mode (until it asks for a transaction) whose database
    failures surface as `DatabaseUnavailable` (503). It checks out a connection only when
    it first runs a statement, so a request that fails validation never waits for one."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except Exception as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable from exc
            raise


# Closed when the route returns, not after the response is sent: the connection goes
# back to the pool sooner.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
