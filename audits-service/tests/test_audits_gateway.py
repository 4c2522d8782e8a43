"""The audits API as clients use it: through the gateway, both as real uvicorn processes."""

from collections.abc import Iterator
from uuid import uuid4

import httpx
import pytest
from alembic import command
from audits_testkit import AUDITS, alembic_config, record

from devstack.postgres import EmbeddedPostgres, free_port
from devstack.processes import ServiceProcess
from testkit.checks import assert_problem


@pytest.fixture(scope="module")
def gateway(postgres: EmbeddedPostgres) -> Iterator[httpx.Client]:
    url = postgres.create_database(f"audits_gateway_{uuid4().hex[:8]}")
    command.upgrade(alembic_config(url), "head")
    audits = ServiceProcess("audits", {"DATABASE_URL": url, "LOG_LEVEL": "WARNING"})
    gateway = ServiceProcess(
        "gateway",
        {
            "AUDITS_SERVICE_URL": audits.url,
            "LLM_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
            "LOG_LEVEL": "WARNING",
        },
    )
    audits.start()
    try:
        gateway.start()
        try:
            with httpx.Client(base_url=gateway.url, timeout=15) as client:
                yield client
        finally:
            gateway.stop()
    finally:
        audits.stop()


def test_crud_through_the_gateway(gateway: httpx.Client) -> None:
    request_id = f"via-gateway-{uuid4()}"
    created = gateway.post(
        AUDITS,
        json=record(metadata={"k": [1, {"n": None}]}, ip_address="2001:db8::1"),
        headers={"X-Request-ID": request_id},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["request_id"] == request_id
    assert created.headers["x-request-id"] == request_id
    location = created.headers["location"]
    assert location == f"{AUDITS}/{body['id']}"

    assert gateway.get(location).json() == body
    updated = gateway.put(location, json={"status": "denied"})
    assert updated.status_code == 200
    assert updated.json()["status"] == "denied"
    assert gateway.delete(location).status_code == 204
    assert_problem(gateway.get(location), 404, "not_found")


def test_listing_through_the_gateway(gateway: httpx.Client) -> None:
    actor = f"gw-{uuid4()}"
    ids = {gateway.post(AUDITS, json=record(actor=actor)).json()["id"] for _ in range(5)}
    page = gateway.get(AUDITS, params={"actor": actor, "limit": 2}).json()
    assert page["total"] == 5
    seen = [item["id"] for item in page["items"]]
    cursor = page["next_cursor"]
    for _ in range(5):
        if cursor is None:
            break
        page = gateway.get(AUDITS, params={"actor": actor, "limit": 2, "cursor": cursor}).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(ids)
    offset_page = gateway.get(AUDITS, params={"actor": actor, "limit": 2, "offset": 4}).json()
    assert len(offset_page["items"]) == 1


def test_main_errors_through_the_gateway(gateway: httpx.Client) -> None:
    assert_problem(gateway.post(AUDITS, json=record(extra=1)), 422, "validation_error")
    assert_problem(gateway.post(AUDITS, json=record(action="nope")), 422, "validation_error")
    assert_problem(gateway.get(AUDITS, params={"limit": 51}), 422, "validation_error")
    assert_problem(gateway.get(f"{AUDITS}/not-a-uuid"), 422, "validation_error")
    assert_problem(gateway.put(f"{AUDITS}/{uuid4()}", json={}), 422, "validation_error")
    key = str(uuid4())
    first = gateway.post(AUDITS, json=record(actor="a"), headers={"Idempotency-Key": key})
    replay = gateway.post(AUDITS, json=record(actor="a"), headers={"Idempotency-Key": key})
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    other = gateway.post(AUDITS, json=record(actor="b"), headers={"Idempotency-Key": key})
    assert_problem(other, 422, "idempotency_key_reused")


def test_database_health_through_the_gateway(gateway: httpx.Client) -> None:
    body = gateway.get("/health/db").json()
    assert body["status"] == "ok"
    assert body["migration"]["up_to_date"] is True
