"""Alembic environment: async engine on DATABASE_URL, targeting the audits service's tables.

`config.attributes["database_url"]` (set by tests and tools calling Alembic in-process)
wins over the environment.
"""

import asyncio
import os

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from audits_service.audits import models  # noqa: F401  (registers the tables)
from audits_service.config import Settings, normalise_database_url
from audits_service.database import Base
from audits_service.trail import models as trail_models  # noqa: F401
from servicekit.logs import configure_logging

config = context.config
if config.attributes.get("configure_logger", True):
    # JSON lines like every service's, so that the migrations one-shot's output is collected
    # and parsed with theirs.
    configure_logging("migrations", os.environ.get("LOG_LEVEL", "INFO"))

target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("database_url")
    if url is not None:
        return normalise_database_url(url)
    return Settings().database_url.get_secret_value()


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
