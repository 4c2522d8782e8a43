"""Every rule for single records (create, read, update, delete), at the HTTP level."""

import json
import time
from datetime import datetime
from uuid import UUID, uuid4

import httpx
import pytest
from audits_testkit import AUDITS, app_client, record

from audits_service.audits.constants import AuditAction, AuditStatus
from audits_service.audits.schemas import AuditRecordPage, AuditRecordResponse
from audits_service.config import Settings
from audits_service.main import create_app
from devstack.postgres import free_port
from testkit.checks import assert_problem

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_create_returns_201_location_and_the_record(client: httpx.AsyncClient) -> None:
    body = record(
        resource_id="doc-1",
        description="Opened the report",
        metadata={"tags": ["a", "b"], "nested": {"level": 2}},
        ip_address="203.0.113.7",
        user_agent="curl/8",
    )
    response = await client.post(AUDITS, json=body, headers={"X-Request-ID": "req-create-1"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"{AUDITS}/{created['id']}"
    assert UUID(created["id"])
    for field, value in body.items():
        assert created[field] == value
    assert created["status"] == "success"
    assert created["request_id"] == "req-create-1"
    assert created["created_at"].endswith("Z")
    assert created["created_at"] == created["updated_at"]
    datetime.fromisoformat(created["created_at"])

    fetched = await client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == created


async def test_every_response_is_what_the_response_model_serialises(
    client: httpx.AsyncClient,
) -> None:
    """Bodies are rendered from the rows, not through the model: they must still be exactly
    the model's JSON, whichever route answers."""
    metadata = {"f": 0.5, "big": 2**70, "text": "é\u2028", "nested": {"list": [1, None, True]}}
    created = await client.post(AUDITS, json=record(metadata=metadata, ip_address="::1"))
    assert created.status_code == 201
    body = created.json()
    path = f"{AUDITS}/{body['id']}"
    updated = await client.put(path, json={"description": "changed"})
    read = await client.get(path)
    page = await client.get(AUDITS, params={"actor": body["actor"], "limit": 50})
    answers = [created.json(), updated.json(), read.json(), *page.json()["items"]]
    for answer in answers:
        assert answer == AuditRecordResponse.model_validate(answer).model_dump(mode="json")
        assert list(answer) == list(AuditRecordResponse.model_fields)
    assert answers[1:] == [read.json()] * 3
    assert read.json()["metadata"] == metadata
    assert AuditRecordPage.model_validate(page.json()).total == 1


async def test_defaults_and_generated_request_id(client: httpx.AsyncClient) -> None:
    response = await client.post(AUDITS, json=record())
    created = response.json()
    assert created["status"] == "success"
    assert created["metadata"] == {}
    for field in ("resource_id", "description", "ip_address", "user_agent"):
        assert created[field] is None
    assert created["request_id"] == response.headers["x-request-id"]
    UUID(created["request_id"])


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:0db8:0000::0001", "2001:db8::1"),
        ("::1", "::1"),
        ("::ffff:c000:201", "::ffff:192.0.2.1"),
    ],
)
async def test_ip_addresses(client: httpx.AsyncClient, address: str, stored: str) -> None:
    response = await client.post(AUDITS, json=record(ip_address=address))
    assert response.status_code == 201, response.text
    assert response.json()["ip_address"] == stored


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(record(unknown="x"), id="unknown-field"),
        pytest.param({"actor": "a", "resource_type": "t"}, id="missing-action"),
        pytest.param(record(actor=""), id="empty-actor"),
        pytest.param(record(actor="a" * 256), id="long-actor"),
        pytest.param(record(resource_type="t" * 101), id="long-resource-type"),
        pytest.param(record(resource_id="r" * 256), id="long-resource-id"),
        pytest.param(record(description="d" * 2001), id="long-description"),
        pytest.param(record(user_agent="u" * 513), id="long-user-agent"),
        pytest.param(record(actor="a\x00b"), id="nul-actor"),
        pytest.param(record(description="\x00"), id="nul-description"),
        pytest.param(record(metadata={"k\x00": 1}), id="nul-metadata-key"),
        pytest.param(record(metadata={"k": ["ok", {"v": "x\x00"}]}), id="nul-metadata-value"),
        pytest.param(record(metadata=[1, 2]), id="metadata-not-object"),
        pytest.param(record(metadata={"blob": "x" * 16_400}), id="metadata-too-big"),
        pytest.param(record(ip_address="999.1.1.1"), id="bad-ipv4"),
        pytest.param(record(ip_address="192.0.2.01"), id="ipv4-leading-zero"),
        pytest.param(record(ip_address="192.0.2"), id="ipv4-three-parts"),
        pytest.param(record(ip_address="fe80::1%eth0"), id="ipv6-zone"),
        pytest.param(record(ip_address="10.0.0.0/8"), id="network-not-address"),
        pytest.param(record(actor=42), id="actor-not-string"),
        pytest.param(record(status=None), id="null-status"),
    ],
)
async def test_invalid_creates_are_422(client: httpx.AsyncClient, body: object) -> None:
    response = await client.post(AUDITS, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"]


def nested(levels: int) -> dict[str, object]:
    """A metadata object `levels` deep, the object itself being level 1."""
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


async def test_metadata_limits(client: httpx.AsyncClient) -> None:
    assert (await client.post(AUDITS, json=record(metadata=nested(10)))).status_code == 201
    deep = await client.post(AUDITS, json=record(metadata=nested(11)))
    assert_problem(deep, 422, "validation_error")
    list_deep = await client.post(AUDITS, json=record(metadata={"a": [[[[[[[[[[1]]]]]]]]]]}))
    assert_problem(list_deep, 422, "validation_error")
    # 16 KiB of compact JSON exactly: {"b":"xxx…"} is 8 bytes of framing.
    exact = record(metadata={"b": "x" * (16 * 1024 - 8)})
    assert (await client.post(AUDITS, json=exact)).status_code == 201
    over = record(metadata={"b": "x" * (16 * 1024 - 7)})
    assert_problem(await client.post(AUDITS, json=over), 422, "validation_error")


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param({"f": 1e-07, "é": "ü"}, id="float-exponent"),
        pytest.param({"i": 2**64, "i2": -(2**70)}, id="integers-beyond-64-bits"),
        pytest.param({"q": 'a"\\\n\x01\u2028'}, id="escapes"),
    ],
)
async def test_metadata_size_is_counted_as_compact_json(
    client: httpx.AsyncClient, framing: dict[str, object]
) -> None:
    """The limit counts `json.dumps(…, ensure_ascii=False, separators=(",", ":"))` bytes."""
    framed = {**framing, "b": ""}
    room = 16 * 1024 - len(json.dumps(framed, ensure_ascii=False, separators=(",", ":")).encode())
    exact = record(metadata={**framing, "b": "x" * room})
    assert (await client.post(AUDITS, json=exact)).status_code == 201
    over = record(metadata={**framing, "b": "x" * (room + 1)})
    assert_problem(await client.post(AUDITS, json=over), 422, "validation_error")


async def test_non_finite_numbers_in_metadata_are_422(client: httpx.AsyncClient) -> None:
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        content = (
            f'{{"action":"read","actor":"a","resource_type":"t","metadata":{{"x":{literal}}}}}'
        )
        response = await client.post(
            AUDITS, content=content, headers={"Content-Type": "application/json"}
        )
        assert_problem(response, 422, "validation_error")


async def test_lone_surrogate_is_422(client: httpx.AsyncClient) -> None:
    content = '{"action":"read","actor":"\\ud800","resource_type":"t"}'
    response = await client.post(
        AUDITS, content=content, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 422, "validation_error")


async def test_wrong_enum_lists_the_allowed_values(client: httpx.AsyncClient) -> None:
    problem = assert_problem(
        await client.post(AUDITS, json=record(action="destroy")), 422, "validation_error"
    )
    message = str(problem["errors"])
    for action in AuditAction:
        assert f"'{action.value}'" in message
    problem = assert_problem(
        await client.post(AUDITS, json=record(status="maybe")), 422, "validation_error"
    )
    for status in AuditStatus:
        assert f"'{status.value}'" in str(problem["errors"])


async def test_get_unknown_is_404_and_malformed_id_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{AUDITS}/{uuid4()}"), 404, "not_found")
    assert_problem(await client.get(f"{AUDITS}/not-a-uuid"), 422, "validation_error")
    assert_problem(await client.put(f"{AUDITS}/nope", json={"actor": "x"}), 422, "validation_error")
    assert_problem(await client.delete(f"{AUDITS}/nope"), 422, "validation_error")


async def test_update_subset_advances_updated_at(client: httpx.AsyncClient) -> None:
    created = (await client.post(AUDITS, json=record(description="before"))).json()
    response = await client.put(
        f"{AUDITS}/{created['id']}", json={"status": "failure", "description": None}
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["status"] == "failure"
    assert updated["description"] is None
    assert updated["actor"] == created["actor"]
    assert updated["created_at"] == created["created_at"]
    assert updated["request_id"] == created["request_id"]
    assert datetime.fromisoformat(updated["updated_at"]) > datetime.fromisoformat(
        created["updated_at"]
    )
    assert (await client.get(f"{AUDITS}/{created['id']}")).json() == updated

    again = (await client.put(f"{AUDITS}/{created['id']}", json={"status": "failure"})).json()
    assert again["updated_at"] > updated["updated_at"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty"),
        pytest.param({"actor": None}, id="null-actor"),
        pytest.param({"action": None}, id="null-action"),
        pytest.param({"status": None}, id="null-status"),
        pytest.param({"resource_type": None}, id="null-resource-type"),
        pytest.param({"metadata": None}, id="null-metadata"),
        pytest.param({"id": "x"}, id="read-only-id"),
        pytest.param({"request_id": "x"}, id="read-only-request-id"),
        pytest.param({"created_at": "2020-01-01T00:00:00Z"}, id="read-only-created-at"),
        pytest.param({"action": "destroy"}, id="bad-enum"),
        pytest.param({"actor": "a" * 256}, id="long-actor"),
        pytest.param({"user_agent": "\x00"}, id="nul"),
    ],
)
async def test_invalid_updates_are_422(client: httpx.AsyncClient, body: object) -> None:
    created = (await client.post(AUDITS, json=record())).json()
    response = await client.put(f"{AUDITS}/{created['id']}", json=body)
    assert_problem(response, 422, "validation_error")


async def test_update_unknown_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.put(f"{AUDITS}/{uuid4()}", json={"actor": "x"}), 404, "not_found")


async def test_delete_then_404(client: httpx.AsyncClient) -> None:
    created = (await client.post(AUDITS, json=record())).json()
    response = await client.delete(f"{AUDITS}/{created['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.delete(f"{AUDITS}/{created['id']}"), 404, "not_found")
    assert_problem(await client.get(f"{AUDITS}/{created['id']}"), 404, "not_found")


async def test_trailing_slash_is_404_not_a_redirect(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post(f"{AUDITS}/", json=record()), 404, "not_found")
    assert_problem(await client.get(f"{AUDITS}/"), 404, "not_found")


async def test_null_body_is_422(client: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "application/json"}
    assert_problem(
        await client.post(AUDITS, content=b"null", headers=headers), 422, "validation_error"
    )
    created = (await client.post(AUDITS, json=record())).json()
    response = await client.put(f"{AUDITS}/{created['id']}", content=b"null", headers=headers)
    assert_problem(response, 422, "validation_error")


async def test_body_that_is_not_json_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        AUDITS, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


_STRICT_HEAD = b'{"action":"read","actor":"%s","resource_type":"t"'


@pytest.mark.parametrize(
    "body",
    [
        b'{"action":"read","actor":"%s","actor":"someone-else","resource_type":"t"}',
        _STRICT_HEAD + b',"metadata":{"k":1,"k":2}}',
        _STRICT_HEAD + b',"metadata":' + b"[" * 5000 + b"]" * 5000 + b"}",
        _STRICT_HEAD + b',"metadata":{"n":' + b"9" * 5000 + b"}}",
    ],
    ids=["actor-twice", "metadata-key-twice", "nesting-5000", "integer-of-5000-digits"],
)
async def test_json_two_parsers_could_read_differently_is_422_and_stores_nothing(
    client: httpx.AsyncClient, body: bytes
) -> None:
    """A duplicate key (Python keeps the last, other parsers the first), nesting too deep
    for the parser, an integer too long to convert: one `json_invalid` issue, never a 400 or
    a record stored from whichever value the parser kept."""
    actor = f"strict-{uuid4()}"
    headers = {"Content-Type": "application/json"}
    created = (await client.post(AUDITS, json=record())).json()
    batch = b'{"records":[' + body % actor.encode() + b"]}"
    for response in (
        await client.post(AUDITS, content=body % actor.encode(), headers=headers),
        await client.post(f"{AUDITS}/batch", content=batch, headers=headers),
        await client.put(
            f"{AUDITS}/{created['id']}", content=body % actor.encode(), headers=headers
        ),
    ):
        problem = assert_problem(response, 422, "validation_error")
        assert [issue["type"] for issue in problem["errors"]] == ["json_invalid"], problem
    assert (await client.get(AUDITS, params={"actor": actor})).json()["total"] == 0
    assert (await client.get(f"{AUDITS}/{created['id']}")).json() == created


async def test_health_db_reports_migration_state(client: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    response = await client.get("/health/db")
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    # The check's own time: measured (a round trip to the database is never 0) and part of
    # the request's.
    assert 0 < body["latency_ms"] <= elapsed_ms
    assert body["migration"]["up_to_date"] is True
    assert body["migration"]["current"] == body["migration"]["head"]
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert (await client.get("/health")).status_code == 200


async def test_health_before_migrations(fresh_database_url: str) -> None:
    settings = Settings(database_url=fresh_database_url, log_level="WARNING")
    async with app_client(create_app(settings)) as client:
        body = (await client.get("/health/db")).json()
        assert body["status"] == "degraded"
        assert body["migration"]["current"] is None
        assert body["migration"]["head"]
        assert body["migration"]["up_to_date"] is False
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["code"] == "migrations_pending"


async def test_unreachable_database_is_503_everywhere() -> None:
    settings = Settings(
        database_url=f"postgresql://postgres:secret-pw@127.0.0.1:{free_port()}/none",
        db_pool_timeout=1,
        log_level="WARNING",
    )
    async with app_client(create_app(settings)) as client:
        for response in (
            await client.post(AUDITS, json=record()),
            await client.get(AUDITS),
            await client.get(f"{AUDITS}/{uuid4()}"),
            await client.put(f"{AUDITS}/{uuid4()}", json={"actor": "x"}),
            await client.delete(f"{AUDITS}/{uuid4()}"),
            await client.get("/health/db"),
        ):
            problem = assert_problem(response, 503, "database_unavailable")
            assert "secret-pw" not in response.text
            assert problem["detail"]
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert "secret-pw" not in ready.text
        assert (await client.get("/health")).status_code == 200


async def test_a_bad_idempotency_key_is_one_validation_issue(client: httpx.AsyncClient) -> None:
    response = await client.post(AUDITS, json=record(), headers={"Idempotency-Key": "k" * 300})
    assert response.status_code == 422
    assert len(response.json()["errors"]) == 1


async def test_delete_answers_204_with_no_body_and_no_content_type(
    client: httpx.AsyncClient,
) -> None:
    created = (await client.post(AUDITS, json=record())).json()
    response = await client.delete(f"{AUDITS}/{created['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers
