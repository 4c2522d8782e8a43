from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TypedDict

from fastapi import FastAPI
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service import __version__
from audits_service.audits.router import router as audits_router
from audits_service.config import Settings
from audits_service.database import create_engine
from audits_service.health import database_ready, migration_head
from audits_service.health import router as database_health_router
from audits_service.trail.maintenance import background_jobs
from audits_service.trail.router import router as trail_router
from servicekit import (
    configure_tracing,
    health_router,
    install_graceful_shutdown,
    install_servicekit,
    operation_id,
)


class State(TypedDict):
    settings: Settings
    engine: AsyncEngine
    migration_head: str | None


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings) -> AsyncIterator[State]:
    install_graceful_shutdown(app, settings.shutdown_drain_seconds)
    engine = create_engine(settings)
    head = migration_head(settings.migrations_dir)
    logger.info(
        "audits service starting",
        database=settings.database_url_safe,
        pool_size=settings.db_pool_size,
        migration_head=head,
    )
    try:
        async with background_jobs(engine, settings):
            yield {
                "settings": settings,
                "engine": engine,
                "migration_head": head,
            }
    finally:
        await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="Audits",
        version=__version__,
        summary="Audit-trail records in PostgreSQL.",
        lifespan=partial(lifespan, settings=settings),
        # A redirect would name this service's host, which clients behind the gateway
        # cannot reach: `/api/v1/audits/` is a plain 404 instead.
        redirect_slashes=False,
        telemetry=configure_tracing("audits"),
        generate_unique_id_function=operation_id,
    )
    install_servicekit(app, service="audits", settings=settings)
    app.include_router(health_router("audits", ready=database_ready))
    app.include_router(database_health_router)
    # Before the records' router: `/audits/verify` and `/audits/head` are not record ids.
    app.include_router(trail_router, prefix="/api/v1")
    app.include_router(audits_router, prefix="/api/v1")
    return app
