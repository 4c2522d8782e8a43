"""A throwaway audits database with its own app, for trail tests that tamper with it."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from alembic import command
from audits_testkit import AUDITS, SERVICE_LOGIN, alembic_config, app_client, record
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.config import Settings
from audits_service.database import create_engine
from audits_service.main import create_app
from audits_service.roles import ensure_login_role, service_url


@dataclass
class Trail:
    client: httpx.AsyncClient
    # Superuser connection for tampering and inspection.
    admin: asyncpg.Connection
    admin_url: str
    # The service's own engine (non-owner role), for sealing and purging by hand.
    engine: AsyncEngine
    settings: Settings

    async def create(self, **fields: Any) -> dict[str, Any]:
        response = await self.client.post(AUDITS, json=record(**fields))
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def verify(self, **params: str) -> dict[str, Any]:
        response = await self.client.get(f"{AUDITS}/verify", params=params)
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        return report

    async def history(self, record_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"{AUDITS}/{record_id}/history")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items


@asynccontextmanager
async def trail_database(admin_url: str, **settings: Any) -> AsyncIterator[Trail]:
    # Alembic runs its own event loop: in a thread, away from the test's.
    await asyncio.to_thread(command.upgrade, alembic_config(admin_url), "head")
    await ensure_login_role(admin_url, SERVICE_LOGIN, None)
    options = {"db_pool_timeout": 3, "log_level": "WARNING", "audit_seal_interval": 3600}
    config = Settings(
        database_url=service_url(admin_url, SERVICE_LOGIN, None), **{**options, **settings}
    )
    engine = create_engine(config)
    admin = await asyncpg.connect(admin_url)
    try:
        async with app_client(create_app(config)) as client:
            yield Trail(
                client=client, admin=admin, admin_url=admin_url, engine=engine, settings=config
            )
    finally:
        await admin.close()
        await engine.dispose()


async def tampered(admin: asyncpg.Connection, statement: str, *args: object) -> None:
    """Run `statement` as a superuser with every trigger off, as an attacker holding the
    database's superuser would."""
    async with admin.transaction():
        await admin.execute("SET LOCAL session_replication_role = replica")
        await admin.execute(statement, *args)
