"""Helpers shared by the audits tests (a module of its own: `conftest` is not importable)."""

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
from alembic.config import Config
from fastapi import FastAPI

from testkit.asgi import lifespan_client

Record = dict[str, Any]
Params = dict[str, str | int]

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "migrations" / "alembic.ini"
AUDITS = "/api/v1/audits"
# The login role the tests' services use (a member of the migrations' `audits_app` group).
SERVICE_LOGIN = "audits_service"


def alembic_config(database_url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def app_client(app: FastAPI) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    return lifespan_client(app, "http://audits")


def record(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "action": "login",
        "actor": f"user-{uuid4()}",
        "resource_type": "session",
    }
    body.update(overrides)
    return body
