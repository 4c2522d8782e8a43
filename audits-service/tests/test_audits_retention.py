"""Retention: old records purged in bounded batches while writers keep writing, each leaving
a `purge` event, the trail intact afterwards; one purger at a time."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from audits_testkit import AUDITS
from trail_testkit import Trail, trail_database

from audits_service.config import Settings
from audits_service.trail.locks import JobLock
from audits_service.trail.maintenance import purge_keys_as_leader
from audits_service.trail.retention import PURGE_BATCH, purge_expired_records
from audits_service.trail.sealing import seal

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Several batches; `make bench` purges 1,000,000.
OLD_ROWS = 2 * PURGE_BATCH + 1234

_SEED_OLD = """
INSERT INTO audit_record (action, actor, resource_type, request_id, created_at, updated_at)
SELECT 'read', 'old', 'r', 'seed', now() - interval '40 days', now() - interval '40 days'
FROM generate_series(1, $1)
"""


@pytest.fixture
async def trail(fresh_database_url: str) -> AsyncIterator[Trail]:
    async with trail_database(fresh_database_url, audit_retention_days=30) as trail:
        yield trail


async def test_old_records_are_purged_while_writes_succeed(trail: Trail) -> None:
    await trail.admin.execute(_SEED_OLD, OLD_ROWS)
    kept = await trail.create(actor="recent")
    purged_one = await trail.admin.fetchval("SELECT id::text FROM audit_record WHERE actor='old'")
    stop = asyncio.Event()
    statuses: list[int] = []

    async def writer() -> None:
        while not stop.is_set():
            response = await trail.client.post(
                AUDITS, json={"action": "read", "actor": "during", "resource_type": "r"}
            )
            statuses.append(response.status_code)

    writers = [asyncio.create_task(writer()) for _ in range(4)]
    await asyncio.sleep(0.05)
    purged = await purge_expired_records(trail.engine, 30)
    stop.set()
    await asyncio.gather(*writers)

    assert purged == OLD_ROWS
    assert statuses
    assert set(statuses) == {201}
    remaining = await trail.admin.fetchval("SELECT count(*) FROM audit_record WHERE actor='old'")
    assert remaining == 0
    during = await trail.admin.fetchval("SELECT count(*) FROM audit_record WHERE actor='during'")
    assert during == len(statuses)
    assert (await trail.client.get(f"{AUDITS}/{kept['id']}")).status_code == 200

    purge_events = await trail.admin.fetch(
        "SELECT DISTINCT request_id FROM audit_event WHERE op = 'purge'"
    )
    assert len(purge_events) == 1
    assert purge_events[0][0].startswith("retention-")
    assert await trail.admin.fetchval("SELECT count(*) FROM audit_event WHERE op='purge'") == (
        OLD_ROWS
    )
    history = await trail.history(purged_one)
    assert [event["op"] for event in history] == ["create", "purge"]
    assert history[1]["state"]["actor"] == "old"
    assert (await trail.client.get(f"{AUDITS}/{purged_one}")).status_code == 404

    await seal(trail.engine)
    report = await trail.verify()
    assert report["status"] == "intact", report
    assert report["events_checked"] == 2 * OLD_ROWS + 1 + len(statuses)
    assert await purge_expired_records(trail.engine, 30) == 0


async def test_one_purger_at_a_time(trail: Trail) -> None:
    for job in (JobLock.RETENTION, JobLock.IDEMPOTENCY_PURGE):
        await trail.admin.execute("SELECT pg_advisory_lock($1)", int(job))
    try:
        assert await purge_expired_records(trail.engine, 30) is None
        assert await purge_keys_as_leader(trail.engine) is None
    finally:
        for job in (JobLock.RETENTION, JobLock.IDEMPOTENCY_PURGE):
            await trail.admin.execute("SELECT pg_advisory_unlock($1)", int(job))
    assert await purge_expired_records(trail.engine, 30) == 0
    assert await purge_keys_as_leader(trail.engine) == 0


async def test_retention_is_off_by_default_and_at_least_a_day() -> None:
    url = "postgresql://u@127.0.0.1/db"
    assert Settings(database_url=url).audit_retention_days is None
    assert Settings(database_url=url).audit_seal_interval == 10
    with pytest.raises(ValueError, match="audit_retention_days"):
        Settings(database_url=url, audit_retention_days=0)
