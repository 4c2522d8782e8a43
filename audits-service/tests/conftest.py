"""Audits test fixtures: one migrated database per session, one app on it, unique data per test.

The app logs in as `audits_service`, a member of the migrations' `audits_app` group, as in
production: never as the tables' owner.

Requests commit through the real API, so tests do not roll back; each one works on its
own `actor` / `resource_type` values instead and filters by them.
"""

from collections.abc import AsyncIterator
from uuid import uuid4

import httpx
import pytest
from alembic import command
from audits_testkit import SERVICE_LOGIN, alembic_config, app_client

from audits_service.config import Settings
from audits_service.main import create_app
from audits_service.roles import ensure_login_role, service_url
from devstack.postgres import EmbeddedPostgres


@pytest.fixture(scope="session")
def audits_database_url(postgres: EmbeddedPostgres) -> str:
    """The session's audits database, migrated to head once."""
    url = postgres.create_database("audits_tests")
    command.upgrade(alembic_config(url), "head")
    return url


@pytest.fixture(scope="session")
async def service_database_url(audits_database_url: str) -> str:
    """The session's audits database as the service's own (non-owner) login role."""
    await ensure_login_role(audits_database_url, SERVICE_LOGIN, None)
    return service_url(audits_database_url, SERVICE_LOGIN, None)


@pytest.fixture(scope="session")
def audits_settings(service_database_url: str) -> Settings:
    return Settings(database_url=service_database_url, db_pool_timeout=3, log_level="WARNING")


@pytest.fixture(scope="session")
async def client(audits_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(audits_settings)) as client:
        yield client


@pytest.fixture
def actor() -> str:
    """An actor name no other test uses, to filter this test's records by."""
    return f"actor-{uuid4()}"
