"""A real uvicorn process against a PostgreSQL of its own that goes away and comes back.

Also checks, on the real process, what only a real server shows: the JSON access lines.
"""

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import psutil
import pytest
from alembic import command
from audits_testkit import AUDITS, alembic_config, record

from devstack.postgres import EmbeddedPostgres
from devstack.processes import ServiceProcess
from devstack.run import provision_service_role
from testkit.checks import assert_problem

POOL_TIMEOUT = 2.0
COMMAND_TIMEOUT = 2.0
# Generous: a loaded CI machine must not make this flaky, a hang still fails it.
MARGIN = 3.0


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("outage-postgres") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audits-log") / "audits.log"


@pytest.fixture(scope="module")
def audits_process(own_postgres: EmbeddedPostgres, service_log: Path) -> Iterator[ServiceProcess]:
    url = own_postgres.create_database("audits")
    command.upgrade(alembic_config(url), "head")
    env = {
        "DATABASE_URL": provision_service_role(url),
        "DB_POOL_TIMEOUT": str(POOL_TIMEOUT),
        "DB_COMMAND_TIMEOUT": str(COMMAND_TIMEOUT),
        "DB_POOL_SIZE": "5",
        "LOG_LEVEL": "INFO",
    }
    with service_log.open("wb") as log:
        process = ServiceProcess("audits", env, log=log).start()
        try:
            yield process
        finally:
            process.stop()


@pytest.fixture
def http(audits_process: ServiceProcess) -> Iterator[httpx.Client]:
    timeout = httpx.Timeout(POOL_TIMEOUT + MARGIN + 5)
    with httpx.Client(base_url=audits_process.url, timeout=timeout) as client:
        yield client


def test_requests_are_logged_as_json_lines(http: httpx.Client, service_log: Path) -> None:
    request_id = f"log-{uuid4()}"
    created = http.post(AUDITS, json=record(), headers={"X-Request-ID": request_id})
    assert created.status_code == 201
    assert created.json()["request_id"] == request_id
    assert created.headers["x-request-id"] == request_id
    deadline = time.monotonic() + 5
    access: list[dict[str, object]] = []
    while not access and time.monotonic() < deadline:
        lines = [json.loads(line) for line in service_log.read_text().splitlines() if line]
        access = [line for line in lines if line.get("request_id") == request_id]
        time.sleep(0.05)
    assert access, "no log line carries the request ID"
    line = access[-1]
    assert line["service"] == "audits"
    assert line["method"] == "POST"
    assert line["path"] == AUDITS
    assert line["status"] == 201
    assert isinstance(line["duration_ms"], float | int)
    assert "password" not in service_log.read_text().lower()


def timed(
    call: Callable[..., httpx.Response], *args: object, **kwargs: object
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call(*args, **kwargs)
    return response, time.monotonic() - started


def test_database_outage_is_503_then_recovers_without_restart(
    http: httpx.Client, own_postgres: EmbeddedPostgres
) -> None:
    actor = f"outage-{uuid4()}"
    acknowledged = []
    for _ in range(20):
        response = http.post(AUDITS, json=record(actor=actor))
        assert response.status_code == 201
        acknowledged.append(response.json())
    assert http.get("/health/ready").status_code == 200
    some_id = acknowledged[0]["id"]

    own_postgres.stop()
    try:
        calls: list[tuple[Callable[..., httpx.Response], str, dict[str, Any]]] = [
            (http.post, AUDITS, {"json": record(actor=actor)}),
            (http.post, AUDITS, {"json": record(actor=actor), "headers": {"Idempotency-Key": "k"}}),
            (http.get, AUDITS, {"params": {"actor": actor}}),
            (http.get, f"{AUDITS}/{some_id}", {}),
            (http.put, f"{AUDITS}/{some_id}", {"json": {"status": "failure"}}),
            (http.delete, f"{AUDITS}/{some_id}", {}),
            (http.get, "/health/db", {}),
        ]
        for method, path, kwargs in calls:
            response, elapsed = timed(method, path, **kwargs)
            assert_problem(response, 503, "database_unavailable")
            assert elapsed < POOL_TIMEOUT + MARGIN, (path, elapsed)
        ready, elapsed = timed(http.get, "/health/ready")
        assert ready.status_code == 503
        assert ready.json()["code"] == "database_unavailable"
        assert elapsed < POOL_TIMEOUT + MARGIN
        assert http.get("/health").status_code == 200
    finally:
        own_postgres.start()

    deadline = time.monotonic() + 15
    while http.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the service did not recover"
        time.sleep(0.2)
    after = http.post(AUDITS, json=record(actor=actor))
    assert after.status_code == 201
    page = http.get(AUDITS, params={"actor": actor, "limit": 50}).json()
    assert page["total"] == len(acknowledged) + 1
    stored = {item["id"]: item for item in page["items"]}
    for created in acknowledged:
        assert stored[created["id"]] == created
    assert http.get("/health/db").json()["migration"]["up_to_date"] is True


def test_a_database_that_stops_answering_is_503_not_a_hang(
    http: httpx.Client, own_postgres: EmbeddedPostgres
) -> None:
    """Frozen server processes (as behind a network partition): connections open, no replies."""
    assert http.post(AUDITS, json=record()).status_code == 201
    assert own_postgres.process is not None
    postmaster = psutil.Process(own_postgres.process.pid)
    frozen = [postmaster, *postmaster.children(recursive=True)]
    for process in frozen:
        process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(2):
            response, elapsed = timed(http.get, AUDITS)
            assert_problem(response, 503, "database_unavailable")
            # A pooled connection costs one failed ping, then one failed connect at most.
            assert elapsed < POOL_TIMEOUT + COMMAND_TIMEOUT + MARGIN, elapsed
        response, elapsed = timed(http.post, AUDITS, json=record())
        assert_problem(response, 503, "database_unavailable")
        assert elapsed < POOL_TIMEOUT + COMMAND_TIMEOUT + MARGIN, elapsed
    finally:
        for process in frozen:
            process.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 15
    while http.post(AUDITS, json=record()).status_code != 201:
        assert time.monotonic() < deadline, "the service did not recover"
        time.sleep(0.2)
