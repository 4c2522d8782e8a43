"""Exports at scale through a real gateway: the same records as the listing, constant memory,
nothing left behind by a client that leaves, and failures a client can detect.

`AUDITS_EXPORT_ROWS` sets how many records the database holds (default 100,000).
"""

import asyncio
import csv
import io
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import psutil
import pytest
from alembic import command
from audits_testkit import AUDITS, Record, alembic_config, record

from audits_service.audits.schemas import AuditRecordResponse
from devstack.postgres import EmbeddedPostgres, free_port
from devstack.processes import ServiceProcess
from devstack.run import provision_service_role

# The listing side of the comparison pages through every row, 50 at a time.
pytestmark = pytest.mark.timeout(600)

EXPORT = f"{AUDITS}/export"
ROWS = int(os.environ.get("AUDITS_EXPORT_ROWS", "100000"))
MIB = 2**20
# What "flat" allows: allocator churn, a fraction of the export's size.
RSS_GROWTH_LIMIT = 10 * MIB

# Rows of every shape: ties on created_at, whole seconds (no fraction), text that needs
# quoting in CSV, non-ASCII, nested metadata, IPv4/IPv6/mapped addresses, nulls.
SEED = """
INSERT INTO audit_record (id, action, status, actor, resource_type, resource_id, description,
                          metadata, ip_address, user_agent, request_id, created_at, updated_at)
SELECT gen_random_uuid(),
       (ARRAY['create','read','update','delete','login','logout'])[1 + g % 6],
       (ARRAY['success','failure','denied','pending'])[1 + g % 4],
       'export-' || (g % 3),
       'document',
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'doc-' || g END,
       CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN 'plain' WHEN 2 THEN 'comma, "quote"' || chr(10)
            ELSE 'ünïcødé ✓ ' || g END,
       jsonb_build_object('n', g, 'tags', jsonb_build_array('x', g % 7, NULL),
                          'nested', jsonb_build_object('f', g / 7.0)),
       (ARRAY[NULL, '192.0.2.1', '2001:db8::1', '::ffff:192.0.2.9'])[1 + g % 4]::inet,
       CASE WHEN g % 2 = 0 THEN 'agent/' || g END,
       'seed-' || g,
       ts, ts
FROM generate_series(1, $1) AS g,
     LATERAL (SELECT CASE WHEN g % 10 = 0 THEN date_trunc('second', now()) - g * interval '1 s'
                          ELSE now() - (g / 2) * interval '1 millisecond' END AS ts) AS t
"""


@dataclass
class Deployment:
    # The owner's (seeding, the tests' own SQL) and the audits service's login role's.
    database_url: str
    service_url: str
    audits: ServiceProcess
    gateway: ServiceProcess
    log: Path


def start(name: str, env: dict[str, str], log: Path | None = None) -> ServiceProcess:
    handle = log.open("ab") if log is not None else None
    try:
        return ServiceProcess(name, {"LOG_LEVEL": "INFO", **env}, log=handle).start()
    finally:
        if handle is not None:
            handle.close()


@pytest.fixture(scope="module")
def deployment(
    postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    url = postgres.create_database(f"audits_export_{uuid4().hex[:8]}")
    command.upgrade(alembic_config(url), "head")
    asyncio.run(_seed(url))
    service_url = provision_service_role(url)
    log = tmp_path_factory.mktemp("export") / "audits.log"
    # A sealing round soon after the start, so that waiting for the seeded events' (`_sealed`)
    # takes seconds.
    audits = start("audits", {"DATABASE_URL": service_url, "AUDIT_SEAL_INTERVAL": "0.5"}, log)
    try:
        asyncio.run(_sealed(url, audits.url))
        gateway_env = {
            "AUDITS_SERVICE_URL": audits.url,
            "LLM_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
            "LOG_LEVEL": "WARNING",
        }
        gateway = start("gateway", gateway_env)
        try:
            yield Deployment(url, service_url, audits, gateway, log)
        finally:
            gateway.stop()
    finally:
        audits.stop()


async def _seed(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(SEED, ROWS)
        await connection.execute("VACUUM ANALYZE audit_record")
    finally:
        await connection.close()


async def _sealed(url: str, audits_url: str) -> None:
    """Returns once the service's sealer has sealed every seeded event. Sealing reads
    10,000 events at a time into the service's memory, and the export's memory check must
    measure the export alone."""
    connection = await asyncpg.connect(url)
    try:
        last = await connection.fetchval("SELECT coalesce(max(seq), 0) FROM audit_event")
    finally:
        await connection.close()
    async with httpx.AsyncClient(base_url=audits_url) as client, asyncio.timeout(120):
        while True:
            if (await client.get(f"{AUDITS}/head")).json()["seq"] >= last:
                return
            await asyncio.sleep(0.2)


@pytest.fixture
async def gateway(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=deployment.gateway.url, timeout=60) as client:
        yield client


async def listed(client: httpx.AsyncClient, params: dict[str, str]) -> list[Record]:
    """The listing's records, every cursor page of 50."""
    items: list[Record] = []
    query: dict[str, str | int] = {**params, "limit": 50, "include_total": "false"}
    while True:
        page = (await client.get(AUDITS, params=query)).json()
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        query["cursor"] = page["next_cursor"]


class RssWatch:
    """Peak RSS of processes, sampled while something runs."""

    def __init__(self, *processes: ServiceProcess) -> None:
        self.processes = [psutil.Process(p.process.pid) for p in processes if p.process]
        self.baseline = [p.memory_info().rss for p in self.processes]
        self.peak = list(self.baseline)
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            for index, process in enumerate(self.processes):
                self.peak[index] = max(self.peak[index], process.memory_info().rss)
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> "RssWatch":
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def growth(self) -> list[int]:
        return [peak - base for peak, base in zip(self.peak, self.baseline, strict=True)]


async def streamed(client: httpx.AsyncClient, params: dict[str, str]) -> bytes:
    parts: list[bytes] = []
    async with client.stream("GET", EXPORT, params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-disposition"].startswith("attachment")
        assert "content-length" not in response.headers
        async for chunk in response.aiter_bytes():
            parts.append(chunk)
    return b"".join(parts)


async def test_ndjson_and_csv_equal_the_listing_in_flat_memory(
    deployment: Deployment, gateway: httpx.AsyncClient
) -> None:
    await streamed(gateway, {"actor": "export-1"})  # warm both processes up
    async with RssWatch(deployment.gateway, deployment.audits) as ndjson_memory:
        ndjson = await streamed(gateway, {})
    async with RssWatch(deployment.gateway, deployment.audits) as csv_memory:
        csv_text = (await streamed(gateway, {"format": "csv"})).decode()
    exported = [json.loads(line) for line in ndjson.splitlines()]
    assert len(exported) == ROWS
    assert len(ndjson) > RSS_GROWTH_LIMIT, "too few rows for the memory check to mean anything"
    assert exported == await listed(gateway, {})

    reader = csv.DictReader(io.StringIO(csv_text, newline=""))
    assert reader.fieldnames == list(AuditRecordResponse.model_fields)
    rows = list(reader)
    assert len(rows) == ROWS
    for row, item in zip(rows, exported, strict=True):
        assert _from_csv(row) == {name: None if v == "" else v for name, v in item.items()}

    for growth in (*ndjson_memory.growth(), *csv_memory.growth()):
        assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / MIB:.1f} MiB"


def _from_csv(row: dict[str, str]) -> Record:
    """A CSV row as a record: an empty field is null, metadata is JSON text."""
    item: dict[str, Any] = {name: value or None for name, value in row.items()}
    item["metadata"] = json.loads(row["metadata"])
    return item


async def test_filtered_export_through_the_gateway(gateway: httpx.AsyncClient) -> None:
    mine = f"export-new-{uuid4()}"
    batch = [record(actor=mine, action="login" if n % 2 else "read") for n in range(30)]
    assert (await gateway.post(f"{AUDITS}/batch", json={"records": batch})).status_code == 201
    for params in ({"actor": mine}, {"actor": mine, "action": "read"}, {"resource_id": "doc-77"}):
        ndjson = await streamed(gateway, params)
        assert [json.loads(line) for line in ndjson.splitlines()] == await listed(gateway, params)


async def _audits_backends(database_url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return list(
            await connection.fetch(
                "SELECT state, query FROM pg_stat_activity "
                "WHERE application_name = 'audits-service' AND datname = current_database()"
            )
        )
    finally:
        await connection.close()


async def test_a_client_leaving_halfway_leaves_nothing_behind(
    deployment: Deployment, gateway: httpx.AsyncClient
) -> None:
    before = deployment.log.read_text().count('"export stopped"')
    for export_format in ("ndjson", "csv"):
        async with gateway.stream("GET", EXPORT, params={"format": export_format}) as response:
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > 2 * MIB:
                    break
    stopped = 0
    backends: list[asyncpg.Record] = []
    for _ in range(100):
        stopped = deployment.log.read_text().count('"export stopped"') - before
        backends = await _audits_backends(deployment.database_url)
        if stopped == 2 and all(backend["state"] == "idle" for backend in backends):
            break
        await asyncio.sleep(0.1)
    assert stopped == 2, "an export kept running after its client left"
    assert all(backend["state"] == "idle" for backend in backends), backends
    # Idle pooled connections only, no more than the pool holds.
    assert len(backends) <= 20
    assert (await gateway.get(AUDITS, params={"limit": 1})).status_code == 200


@pytest.fixture
async def fragile(deployment: Deployment, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway and audits service whose statements time out after 0.5 s."""
    env = {"DATABASE_URL": deployment.service_url, "DB_COMMAND_TIMEOUT": "0.5"}
    audits = start("audits", env, tmp_path / "audits.log")
    gateway_env = {
        "AUDITS_SERVICE_URL": audits.url,
        "LLM_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
    }
    gateway = start("gateway", gateway_env, tmp_path / "gateway.log")
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            yield client
    finally:
        gateway.stop()
        audits.stop()


async def _table_locked(database_url: str, ready: asyncio.Event, release: asyncio.Event) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            await connection.execute("LOCK TABLE audit_record IN ACCESS EXCLUSIVE MODE")
            ready.set()
            await release.wait()
    finally:
        await connection.close()


async def _fail_after_first_chunk(
    client: httpx.AsyncClient, database_url: str, export_format: str
) -> tuple[list[bytes], BaseException | None]:
    """Read the export's first bytes, lock the table so the next chunk's query times out,
    read the rest; returns the body's lines and the error reading it raised, if any."""
    ready, release = asyncio.Event(), asyncio.Event()
    body = b""
    error: BaseException | None = None
    locker: asyncio.Task[None] | None = None
    try:
        async with client.stream("GET", EXPORT, params={"format": export_format}) as response:
            assert response.status_code == 200
            try:
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if locker is None:
                        locker = asyncio.create_task(_table_locked(database_url, ready, release))
                        await ready.wait()
            except httpx.HTTPError as exc:
                error = exc
    finally:
        release.set()
        if locker is not None:
            await locker
    return body.splitlines(), error


async def test_ndjson_failure_mid_stream_ends_with_an_error_line(
    deployment: Deployment, fragile: httpx.AsyncClient
) -> None:
    lines, error = await _fail_after_first_chunk(fragile, deployment.database_url, "ndjson")
    assert error is None
    assert 0 < len(lines) < ROWS
    *records, last = [json.loads(line) for line in lines]
    assert all("id" in item for item in records)
    assert set(last) == {"error"}
    problem = last["error"]
    assert problem["status"] == 503
    assert problem["code"] == "database_unavailable"
    assert problem["instance"] == EXPORT
    assert problem["request_id"]


async def test_csv_failure_mid_stream_cuts_the_body_short(
    deployment: Deployment, fragile: httpx.AsyncClient
) -> None:
    lines, error = await _fail_after_first_chunk(fragile, deployment.database_url, "csv")
    assert isinstance(error, httpx.RemoteProtocolError), error
    assert 1 < len(lines) < ROWS
