"""The audits half through the gateway, with real processes: what clients of the API see."""

from collections.abc import Iterator
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from testkit.checks import assert_problem
from tests.e2e_stack import Stack

AUDITS = "/api/v1/audits"


def record(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "action": "login",
        "actor": f"user-{uuid4()}",
        "resource_type": "session",
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway.url, timeout=15) as client:
        yield client


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


# What the service's own login role must be refused, by the database itself.
TRAIL_REWRITES = (
    "UPDATE audit_event SET op = 'delete'",
    "DELETE FROM audit_event",
    "TRUNCATE audit_event",
    "DELETE FROM audit_checkpoint",
    "ALTER TABLE audit_record DISABLE TRIGGER audit_record_log_event",
    "ALTER TABLE audit_event DISABLE TRIGGER ALL",
    "DROP TRIGGER audit_record_log_event ON audit_record",
    "DROP TABLE audit_event",
    "SET session_replication_role = replica",
)


async def test_the_running_service_logs_in_as_a_role_that_cannot_rewrite_the_trail(
    stack: Stack,
) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=15) as gateway:
        created = await gateway.post(AUDITS, json=record())
    assert created.status_code == 201, created.text
    admin = await asyncpg.connect(stack.database_url)
    try:
        roles = await admin.fetch(
            "SELECT DISTINCT a.usename, r.rolsuper, pg_has_role(a.usename, 'audits_app', 'MEMBER')"
            " AS member, a.usename = t.tableowner AS owner"
            " FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename"
            " CROSS JOIN (SELECT tableowner FROM pg_tables WHERE tablename = 'audit_event') t"
            " WHERE a.application_name = 'audits-service' AND a.datname = current_database()"
        )
    finally:
        await admin.close()
    # The process's pooled sessions: one role, in the service group, neither owner nor superuser.
    assert [tuple(role) for role in roles] == [("audits_service", False, True, False)]
    service = await asyncpg.connect(stack.service_url)
    try:
        for statement in TRAIL_REWRITES:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await service.execute(statement)
        ops = await service.fetch(
            "SELECT op FROM audit_event WHERE record_id = $1", UUID(created.json()["id"])
        )
        assert [row["op"] for row in ops] == ["create"]
    finally:
        await service.close()
