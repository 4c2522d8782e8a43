"""Helpers shared by the audits tests (a module of its own: `conftest` is not importable)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
from alembic.config import Config
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

Record = dict[str, Any]
Params = dict[str, str | int]

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


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body
