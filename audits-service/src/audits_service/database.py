"""Engine, sessions and the mapping of database failures to `503 database_unavailable`."""

import asyncio
from collections.abc import AsyncIterator
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
    if isinstance(exc, PoolTimeoutError | OperationalError | InterfaceError | OSError):
        return True
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
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
        connect_args={
            "timeout": settings.db_pool_timeout,
            "command_timeout": timeout,
            "server_settings": {
                "application_name": "audits-service",
                "statement_timeout": str(int(timeout * 1000)),
            },
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions in autocommit mode: a single statement needs no BEGIN/COMMIT round trips.

    Work of several statements that must be atomic calls `begin_transaction` first.
    """
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return async_sessionmaker(autocommit, expire_on_commit=False)


async def begin_transaction(session: AsyncSession) -> None:
    """Make the session's next statements one READ COMMITTED transaction, up to commit."""
    await session.connection(execution_options={"isolation_level": "READ COMMITTED"})


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except Exception as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable from exc
            raise


SessionDep = Annotated[AsyncSession, Depends(get_session)]
