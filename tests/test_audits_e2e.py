"""The audits half through the gateway, with real processes: what clients of the API see."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from testkit.checks import assert_problem
from tests.e2e_stack import Stack, StartService, gateway_env

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


# The gateway's wait for the audits service's next byte in the verify tests below: above
# the service's one second between spaces, far below the verification they wait for.
SHORT_AUDITS_TIMEOUT_S = 2.0


@asynccontextmanager
async def _checkpoints_locked(database_url: str) -> AsyncIterator[None]:
    """`audit_checkpoint` locked against readers: a verify started meanwhile waits."""
    admin = await asyncpg.connect(database_url)
    try:
        async with admin.transaction():
            await admin.execute("LOCK TABLE audit_checkpoint IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await admin.close()


def _replica(stack: Stack, start_service: StartService, command_timeout_s: float) -> str:
    """A second audits replica on the stack's database, with its own statement timeout,
    behind a gateway of its own with the short `AUDITS_TIMEOUT`; returns the gateway's URL."""
    audits = start_service(
        "audits", {"DATABASE_URL": stack.service_url, "DB_COMMAND_TIMEOUT": f"{command_timeout_s}"}
    )
    env = gateway_env(audits.url, stack.llm.url, AUDITS_TIMEOUT=f"{SHORT_AUDITS_TIMEOUT_S}")
    return start_service("gateway", env).url


async def test_a_verify_longer_than_the_audits_timeout_streams_through_the_gateway(
    stack: Stack, start_service: StartService
) -> None:
    gateway = _replica(stack, start_service, command_timeout_s=30)
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        async with _checkpoints_locked(stack.database_url):
            verify = asyncio.create_task(client.get(f"{AUDITS}/verify"))
            # Three times the gateway's timeout with nothing to report yet.
            await asyncio.sleep(3 * SHORT_AUDITS_TIMEOUT_S)
            assert not verify.done()
        response = await verify
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["transfer-encoding"] == "chunked"
    # One space per second of waiting, then the report: still one JSON document.
    assert response.text.startswith("   ")
    assert response.json()["status"] == "intact"


async def test_a_streamed_verify_that_fails_ends_truncated(
    stack: Stack, start_service: StartService
) -> None:
    # The lock outlasts the replica's statement timeout, which outlasts the gateway's.
    gateway = _replica(stack, start_service, command_timeout_s=2 * SHORT_AUDITS_TIMEOUT_S)
    async with (
        httpx.AsyncClient(base_url=gateway, timeout=60) as client,
        _checkpoints_locked(stack.database_url),
        client.stream("GET", f"{AUDITS}/verify") as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()


async def _verifies_waiting(database_url: str) -> int:
    """Verifications waiting for the test's lock: sessions of the audits service blocked in
    the head query (the sealers, blocked too, read the checkpoints otherwise)."""
    admin = await asyncpg.connect(database_url)
    try:
        waiting: int = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'audits-service'"
            " AND datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE '%to_char(sealed_at%'"
        )
        return waiting
    finally:
        await admin.close()


async def _until_waiting(database_url: str, wanted: int) -> int:
    """The number of waiting verifications once it is `wanted`, or after 10 s."""
    for _ in range(100):
        waiting = await _verifies_waiting(database_url)
        if waiting == wanted:
            break
        await asyncio.sleep(0.1)
    return waiting


async def test_a_client_leaving_a_streamed_verify_stops_it(
    stack: Stack, start_service: StartService
) -> None:
    gateway = _replica(stack, start_service, command_timeout_s=60)
    async with _checkpoints_locked(stack.database_url):
        async with (
            httpx.AsyncClient(base_url=gateway, timeout=60) as client,
            client.stream("GET", f"{AUDITS}/verify") as response,
        ):
            assert response.status_code == 200
            # Held on to: a dropped iterator closes the response when it is collected.
            chunks = response.aiter_bytes()
            assert await anext(chunks) == b" "
            # A new replica's verification may still be opening its connections.
            assert await _until_waiting(stack.database_url, 1) == 1
            assert await anext(chunks) == b" "
        # The client has gone while the lock still holds the verification back.
        assert await _until_waiting(stack.database_url, 0) == 0
