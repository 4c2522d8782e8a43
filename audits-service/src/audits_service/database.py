"""Engine, connection pool and the mapping of database failures to `503 database_unavailable`."""

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final, cast

import asyncpg
import orjson
from asyncpg import PostgresError
from fastapi import Request, Response
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.instrumentation.sqlalchemy.version import (
    __version__ as sqlalchemy_tracing_version,
)
from sqlalchemy import MetaData, event
from sqlalchemy.exc import DBAPIError, InterfaceError, InvalidatePoolError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util import await_only

from audits_service.config import Settings
from audits_service.metrics import POOL_IN_USE, POOL_LIMIT, POOL_TIMEOUTS, POOL_WAIT
from servicekit import ServiceError
from servicekit.jsonbody import StrictJSONRoute
from servicekit.tracing import tracing_enabled

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


# How long overflow connections stay open after the load that needed them.
OVERFLOW_LINGER_S: Final = 10.0


class FairQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's async pool, handing out connections first come, first served.

    The stock pool gives a returned connection to whichever task asks next, so a request
    already waiting can be overtaken again and again (sqlalchemy#7679), which is a tail of
    seconds at a few dozen requests in flight (`make bench`, row `audits-get`, p99; and
    `test_audits_pool.py`, which the stock pool fails). Every checkout here first
    takes a slot of a FIFO semaphore as large as the pool (`pool_size + max_overflow`),
    within the pool timeout, and gives it back with the connection; holding a slot, the
    stock pool always has a connection to give (or may open one) and never waits.

    Overflow connections (beyond `pool_size`, up to `max_overflow` more) open under load as
    in the stock pool, but are not closed the moment they come back: under a steady load a
    little above `pool_size` that closes and reopens a connection for nearly every request.
    One is closed as it is returned only once no more than `pool_size` connections have
    been in use for `overflow_linger` seconds.
    """

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        overflow_linger: float = OVERFLOW_LINGER_S,
        **kw: Any,
    ) -> None:
        # The stock pool's queue holds every connection, overflow ones included.
        super().__init__(creator, pool_size=pool_size + max_overflow, max_overflow=0, **kw)
        self._admission = asyncio.Semaphore(pool_size + max_overflow)
        POOL_LIMIT.set(pool_size + max_overflow)
        self._keep = pool_size
        self._linger = overflow_linger
        self._beyond_keep_at = -math.inf

    async def _admit(self) -> None:
        started = time.perf_counter()
        try:
            if not self._admission.locked():
                # A free slot (and nobody waiting for one, or `locked` would be true) is
                # taken at once: only a wait needs the deadline's timer.
                await self._admission.acquire()
                return
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
            record = super()._do_get()
        except BaseException:
            self._admission.release()
            raise
        POOL_IN_USE.inc()
        if self.checkedout() > self._keep:
            self._beyond_keep_at = time.monotonic()
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            idle = time.monotonic() - self._beyond_keep_at
            if self._pool.qsize() >= self._keep and idle > self._linger:
                try:
                    record.close()
                finally:
                    self._dec_overflow()
            else:
                super()._do_return_conn(record)
        finally:
            POOL_IN_USE.dec()
            self._admission.release()

    def size(self) -> int:
        return self._keep

    def overflow(self) -> int:
        """Connections open beyond `pool_size` (negative: that many fewer), as the stock
        pool counts them."""
        return self._overflow + self._pool.maxsize - self._keep

    def recreate(self) -> "FairQueuePool":
        # The stock recreate passes the queue's size as `pool_size`, with no overflow.
        pool = cast("FairQueuePool", super().recreate())
        pool._keep = self._keep
        pool._linger = self._linger
        return pool


# A connection returned to the pool this recently is taken as alive without a round trip.
# Under load every checkout would otherwise pay a ping (a round trip and a visible share of
# each request's CPU); a connection that died since fails its statement instead, which
# invalidates the pool, so the next checkouts reconnect.
PING_IDLE_AFTER_S: Final = 1.0
_RETURNED_AT: Final = "returned_at"


def _mark_returned(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def _ping_if_idle(engine: AsyncEngine) -> Callable[[Any, ConnectionPoolEntry, Any], None]:
    dialect = engine.dialect

    def ping(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_RETURNED_AT, 0.0) < PING_IDLE_AFTER_S:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                # Reconnects this one, and every connection opened before it on checkout.
                raise InvalidatePoolError() from error
            raise

    return ping


def _trace_statements(engine: AsyncEngine) -> None:
    """A span per statement, by the SQLAlchemy instrumentation's engine events.

    Its engine tracer alone, not `SQLAlchemyInstrumentor().instrument()`: that also wraps
    `Engine.connect` for good, adding a `connect` span to every request's checkout, which
    costs the traced request as much as its statement's (`make bench`, row `tracing`). The
    engine events are the ones SQLAlchemy 2.1 keeps as they were (the tracing tests see
    every statement's span), although the instrumentation declares SQLAlchemy < 2.1.
    """
    name = "opentelemetry.instrumentation.sqlalchemy"
    tracer = trace.get_tracer(name, sqlalchemy_tracing_version)
    # Pool usage as the instrumentation counts it; a no-op without an OpenTelemetry meter
    # (the services' metrics are Prometheus').
    usage = metrics.get_meter(name, sqlalchemy_tracing_version).create_up_down_counter(
        "db.client.connections.usage", unit="connections"
    )
    EngineTracer(tracer, engine.sync_engine, usage)  # type: ignore[no-untyped-call]


# Digits enough for an integer beyond 64 bits, which orjson would read as a float.
_LONG_DIGITS: Final = re.compile(r"\d{19}")


def json_loads(text: str) -> Any:
    """A JSON value read from the database, exactly as `json.loads` reads it.

    orjson decodes a page's `metadata` several times faster, but reads an integer beyond 64
    bits as a float: text holding a run of digits that long goes to `json.loads`, as does
    any text orjson refuses.
    """
    if _LONG_DIGITS.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def create_engine(settings: Settings) -> AsyncEngine:
    """The engine; its statements traced as spans of the request's when tracing is on (by
    engine events, so every statement, ORM or Core, has one)."""
    timeout = settings.db_command_timeout
    engine = create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        poolclass=FairQueuePool,
        # Autocommit unless an operation asks for a transaction: a single statement then
        # needs no BEGIN/COMMIT round trips.
        isolation_level="AUTOCOMMIT",
        json_deserializer=json_loads,
        connect_args={
            "timeout": settings.db_pool_timeout,
            "command_timeout": timeout,
            "server_settings": {
                "application_name": "audits-service",
                "statement_timeout": str(int(timeout * 1000)),
            },
        },
    )
    if tracing_enabled():
        _trace_statements(engine)
    pool = engine.sync_engine.pool
    event.listen(pool, "connect", _mark_returned)
    event.listen(pool, "checkin", _mark_returned)
    event.listen(pool, "checkout", _ping_if_idle(engine))
    return engine


async def driver_connection(connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `connection`, for bulk reads that skip SQLAlchemy's
    row processing and for session-level advisory locks."""
    held = connection.sync_connection
    if held is not None and not held.invalidated and not held.closed:
        # Read as a plain attribute: `get_raw_connection` runs the same read in a greenlet
        # (a stack of its own, allocated and freed per call), which only a reconnect needs.
        raw = held.connection
    else:
        raw = await connection.get_raw_connection()
    driver: asyncpg.Connection | None = raw.driver_connection
    assert driver is not None, "a pooled connection always has its driver connection"
    return driver


async def get_engine(request: Request) -> AsyncEngine:
    """The engine; each operation checks a connection out only while it runs, so a request
    that fails validation never waits for one, and a streamed export checks one out per
    chunk, after the route has returned. `async def`: FastAPI would run a plain `def`
    dependency in a worker thread."""
    engine: AsyncEngine = request.state.engine
    return engine


_TRACER: Final = trace.get_tracer(__name__)


def _statement_span(connection: AsyncConnection, statement: str) -> AbstractContextManager[Any]:
    """The span of a statement run through the driver, named and described as the
    SQLAlchemy instrumentation's spans of the others are."""
    if not tracing_enabled():
        return nullcontext()
    url = connection.engine.url
    attributes: dict[str, str | int] = {
        "db.system": "postgresql",
        "db.name": url.database or "",
        "db.user": url.username or "",
        "db.statement": statement,
        "net.peer.name": url.host or "",
        "net.peer.port": url.port or 5432,
    }
    name = f"{statement.split(maxsplit=1)[0]} {url.database or ''}".rstrip()
    return _TRACER.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes)


async def fetch_rows(
    connection: AsyncConnection, statement: str, *args: object
) -> list[asyncpg.Record]:
    """The rows of `statement` (the driver's text, parameters `$1`, `$2`, …) read by asyncpg
    itself: for a hot read whose values go to the response as they come, SQLAlchemy's
    execution and row processing being most of its CPU. A connection found dead is
    invalidated (closed, not given back to the pool), as SQLAlchemy does, and is a
    `DatabaseUnavailable`."""
    driver = await driver_connection(connection)
    with _statement_span(connection, statement):
        try:
            return await driver.fetch(statement, *args)
        except Exception as exc:
            if await invalidated_if_dead(connection, driver, exc):
                raise DatabaseUnavailable from exc
            raise


async def invalidated_if_dead(
    connection: AsyncConnection, driver: asyncpg.Connection, exc: Exception
) -> bool:
    """Whether `exc`, raised by a statement run through the driver itself, left the driver
    closed; such a connection is invalidated (closed, never given back to the pool), as
    SQLAlchemy does when its own statements find a connection dead."""
    if not driver.is_closed():
        return False
    await connection.invalidate(exc)
    return True


class DatabaseRoute(StrictJSONRoute):
    """A route (its JSON body read strictly) whose database failures surface as
    `DatabaseUnavailable` (503).

    Mapped around the route's handler rather than by a dependency that wraps the route in
    `try`: FastAPI runs such a generator dependency inside an exit stack and a shielded
    cancel scope on every request, a visible share of each records request's CPU (`make
    bench`, rows `audits-post` and `audits-reads`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except Exception as exc:
                if is_unavailable(exc):
                    raise DatabaseUnavailable from exc
                raise

        return handler
