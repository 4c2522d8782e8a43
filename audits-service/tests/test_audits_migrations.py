"""Migrations: up, all the way down, up again on a fresh database, and no model drift."""

import asyncio
import re
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from audits_testkit import ALEMBIC_INI, alembic_config
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from audits_service.config import normalise_database_url
from audits_service.health import migration_head
from devstack.postgres import EmbeddedPostgres


def tables(url: str) -> set[str]:
    async def read() -> set[str]:
        engine = create_async_engine(normalise_database_url(url))
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        await engine.dispose()
        return names

    return asyncio.run(read())


def test_upgrade_downgrade_upgrade_and_no_drift(fresh_database_url: str) -> None:
    config = alembic_config(fresh_database_url)
    command.upgrade(config, "head")
    assert {"audit_record", "idempotency_key", "alembic_version"} <= tables(fresh_database_url)
    command.check(config)

    command.downgrade(config, "base")
    assert tables(fresh_database_url) == {"alembic_version"}

    command.upgrade(config, "head")
    command.check(config)
    assert {"audit_record", "idempotency_key"} <= tables(fresh_database_url)


def test_each_step_is_reversible(postgres: EmbeddedPostgres, fresh_database_url: str) -> None:
    """Each downgrade restores the schema of the revision before it, and upgrading again
    gives back the schema the first upgrade made."""
    config = alembic_config(fresh_database_url)
    script = ScriptDirectory.from_config(config)
    revisions = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    command.stamp(config, "base")  # the baseline holds alembic's own (empty) version table
    previous = postgres.schema_sql(fresh_database_url)
    for revision in revisions:
        command.upgrade(config, revision)
        upgraded = postgres.schema_sql(fresh_database_url)
        assert upgraded != previous, f"{revision} changes nothing"
        command.downgrade(config, "-1")
        assert postgres.schema_sql(fresh_database_url) == previous, f"{revision} downgrade"
        command.upgrade(config, revision)
        assert postgres.schema_sql(fresh_database_url) == upgraded, f"{revision} re-upgrade"
        previous = upgraded


def test_revision_files_are_date_named() -> None:
    versions = Path(ALEMBIC_INI).parent / "versions"
    names = sorted(path.name for path in versions.glob("*.py"))
    assert names
    for name in names:
        assert re.fullmatch(r"\d{8}_\d{4}_[0-9a-f]{12}_\w+\.py", name), name


def test_head_is_read_from_the_scripts(fresh_database_url: str) -> None:
    head = migration_head(Path(ALEMBIC_INI).parent)
    assert (
        head == ScriptDirectory.from_config(alembic_config(fresh_database_url)).get_current_head()
    )
    assert migration_head(Path("/nonexistent")) is None


def test_env_reads_database_url_from_the_environment(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "DATABASE_URL", fresh_database_url.replace("postgresql://", "postgresql+asyncpg://")
    )
    config = alembic_config(fresh_database_url)
    del config.attributes["database_url"]
    command.upgrade(config, "head")

    async def version() -> str:
        engine = create_async_engine(normalise_database_url(fresh_database_url))
        async with engine.connect() as connection:
            value = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar_one()
        await engine.dispose()
        return str(value)

    assert asyncio.run(version()) == migration_head(Path(ALEMBIC_INI).parent)


def _run(url: str, *statements: str) -> list[tuple[object, ...]]:
    async def run() -> list[tuple[object, ...]]:
        engine = create_async_engine(normalise_database_url(url))
        rows: list[tuple[object, ...]] = []
        async with engine.begin() as connection:
            for statement in statements:
                result = await connection.execute(text(statement))
                if result.returns_rows:
                    rows = [tuple(row) for row in result]
        await engine.dispose()
        return rows

    return asyncio.run(run())


def test_existing_records_get_a_create_event(fresh_database_url: str) -> None:
    config = alembic_config(fresh_database_url)
    command.upgrade(config, "8b21e4c7d9a0")
    _run(
        fresh_database_url,
        "INSERT INTO audit_record (action, actor, resource_type, request_id, created_at)"
        " SELECT 'read', 'before-' || n, 'r', 'old-' || n, now() - n * interval '1 hour'"
        " FROM generate_series(1, 3) AS n",
    )
    command.upgrade(config, "head")
    events = _run(
        fresh_database_url,
        "SELECT e.op, e.request_id,"
        " jsonb_populate_record(NULL::audit_record, e.state) IS NOT DISTINCT FROM r"
        " FROM audit_event e JOIN audit_record r ON r.id = e.record_id ORDER BY e.seq",
    )
    # Oldest record first, each with its own request_id and its current state.
    assert events == [("create", f"old-{n}", True) for n in (3, 2, 1)]

    command.downgrade(config, "8b21e4c7d9a0")
    assert "audit_event" not in tables(fresh_database_url)
    functions = _run(
        fresh_database_url,
        "SELECT proname FROM pg_proc WHERE proname LIKE 'audit%'",
    )
    assert functions == []
    triggers = _run(fresh_database_url, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    assert triggers == []
