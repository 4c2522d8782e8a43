"""Database health: `/health/db` (latency and migration state) and the readiness probe."""

import asyncio
import time
from pathlib import Path

from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request
from loguru import logger
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.database import DatabaseUnavailable, MigrationsPending, is_unavailable
from servicekit import DatabaseHealth, MigrationState, ReadinessCheck, problem_responses


def migration_head(migrations_dir: Path) -> str | None:
    """The head revision of the migration scripts shipped with this build."""
    try:
        heads = ScriptDirectory(str(migrations_dir)).get_heads()
    except Exception as exc:  # a missing or broken script directory must not stop the service
        logger.warning("migration scripts unreadable at {}: {}", migrations_dir, exc)
        return None
    return ",".join(sorted(heads)) or None


async def check_database(engine: AsyncEngine, head: str | None, within: float) -> DatabaseHealth:
    """Round trip to the database within `within` seconds, or `DatabaseUnavailable`."""
    try:
        async with asyncio.timeout(within), engine.connect() as connection:
            started = time.perf_counter()
            await connection.execute(text("SELECT 1"))
            latency_ms = round((time.perf_counter() - started) * 1000, 2)
            try:
                versions = (
                    await connection.execute(text("SELECT version_num FROM alembic_version"))
                ).scalars()
                current = ",".join(sorted(versions)) or None
            except ProgrammingError:
                current = None
    except Exception as exc:
        if is_unavailable(exc):
            raise DatabaseUnavailable from exc
        raise
    up_to_date = current is not None and current == head
    return DatabaseHealth(
        status="ok" if up_to_date else "degraded",
        latency_ms=latency_ms,
        migration=MigrationState(current=current, head=head, up_to_date=up_to_date),
    )


async def _check(request: Request) -> DatabaseHealth:
    state = request.state
    return await check_database(state.engine, state.migration_head, state.settings.db_pool_timeout)


async def database_ready(request: Request) -> ReadinessCheck:
    try:
        health = await _check(request)
    except DatabaseUnavailable as exc:
        return ReadinessCheck.failed(exc)
    if health.migration.current is None:
        return ReadinessCheck.failed(
            MigrationsPending("The database has no schema; run the migrations.")
        )
    return ReadinessCheck(ready=True)


router = APIRouter(tags=["health"])


@router.get(
    "/health/db",
    summary="Database check: latency and migration revision",
    responses=problem_responses(503),
)
async def database_health(request: Request) -> DatabaseHealth:
    return await _check(request)
