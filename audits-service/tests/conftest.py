"""Audits test fixtures: one migrated database per session, one app on it, unique data per test.

Requests commit through the real API, so tests do not roll back; each one works on its
own `actor` / `resource_type` values instead and filters by them.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from alembic import command
from alembic.config import Config
from audits_service.config import Settings
from audits_service.main import create_app
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from devstack.postgres import EmbeddedPostgres

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "migrations" / "alembic.ini"
AUDITS = "/api/v1/audits"


def alembic_config(database_url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


@asynccontextmanager
async def app_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client that runs the app's lifespan, as uvicorn would."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://audits") as client:
            yield client


def record(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "action": "login",
        "actor": f"user-{uuid4()}",
        "resource_type": "session",
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="session")
def audits_database_url(postgres: EmbeddedPostgres) -> str:
    """The session's audits database, migrated to head once."""
    url = postgres.create_database("audits_tests")
    command.upgrade(alembic_config(url), "head")
    return url


@pytest.fixture(scope="session")
def audits_settings(audits_database_url: str) -> Settings:
    return Settings(database_url=audits_database_url, db_pool_timeout=3, log_level="WARNING")


@pytest.fixture(scope="session")
async def client(audits_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(audits_settings)) as client:
        yield client


@pytest.fixture
def actor() -> str:
    """An actor name no other test uses, to filter this test's records by."""
    return f"actor-{uuid4()}"
