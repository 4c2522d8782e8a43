"""Engine, sessions and the mapping of database failures to `503 database_unavailable`."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Final

from asyncpg import PostgresError
from fastapi import Depends, Request
from sqlalchemy import MetaData
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from audits_service.config import Settings
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


def create_engine(settings: Settings) -> AsyncEngine:
    timeout = settings.db_command_timeout
    return create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_pre_ping=True,
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


class Sessions:
    """Sessions whose database failures surface as `DatabaseUnavailable` (503), admitted to
    the connection pool first come, first served.

    SQLAlchemy's async pool hands a returned connection to whichever task asks next, so a
    request already waiting can be overtaken again and again (sqlalchemy#7679): at 32
    requests in flight on the default pool, p50 was 5-8 ms and p99 ~1 s. A FIFO semaphore
    as large as the pool, in front of it, keeps the wait fair and bounded by
    DB_POOL_TIMEOUT.
    """

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        self._admission = asyncio.Semaphore(settings.db_pool_size + settings.db_max_overflow)
        self._wait = settings.db_pool_timeout

    @asynccontextmanager
    async def open(self) -> AsyncIterator[AsyncSession]:
        """A session in autocommit mode until it asks for another isolation level."""
        try:
            async with asyncio.timeout(self._wait):
                await self._admission.acquire()
        except TimeoutError:
            raise DatabaseUnavailable(
                "No database connection became free in time; retry later."
            ) from None
        try:
            async with self._sessionmaker() as session:
                yield session
        except Exception as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable from exc
            raise
        finally:
            self._admission.release()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessions: Sessions = request.state.sessions
    async with sessions.open() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
