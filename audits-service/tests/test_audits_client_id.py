"""`client_id`: the gateway's `X-Client-ID` on records (who created one) and on every event
(who made each change); read-only; null without the header."""

import csv
import io

import httpx
import pytest
from audits_testkit import AUDITS, record

from testkit.checks import assert_problem

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def history(client: httpx.AsyncClient, record_id: str) -> list[dict[str, object]]:
    response = await client.get(f"{AUDITS}/{record_id}/history")
    assert response.status_code == 200, response.text
    items: list[dict[str, object]] = response.json()["items"]
    return items


async def test_the_creator_is_on_the_record_and_each_changer_on_its_event(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(AUDITS, json=record(), headers={"X-Client-ID": "ci-bot"})
    assert created.status_code == 201, created.text
    assert created.json()["client_id"] == "ci-bot"
    record_id = created.json()["id"]

    updated = await client.put(
        f"{AUDITS}/{record_id}", json={"status": "failure"}, headers={"X-Client-ID": "ops.admin"}
    )
    assert updated.json()["client_id"] == "ci-bot"
    assert (await client.get(f"{AUDITS}/{record_id}")).json()["client_id"] == "ci-bot"
    deleted = await client.delete(f"{AUDITS}/{record_id}", headers={"X-Client-ID": "cleaner"})
    assert deleted.status_code == 204

    events = await history(client, record_id)
    assert [(e["op"], e["client_id"]) for e in events] == [
        ("create", "ci-bot"),
        ("update", "ops.admin"),
        ("delete", "cleaner"),
    ]


async def test_without_the_header_client_id_is_null_everywhere(
    client: httpx.AsyncClient, actor: str
) -> None:
    created = (await client.post(AUDITS, json=record(actor=actor))).json()
    assert created["client_id"] is None
    await client.put(f"{AUDITS}/{created['id']}", json={"status": "denied"})
    assert [e["client_id"] for e in await history(client, created["id"])] == [None, None]
    listed = (await client.get(AUDITS, params={"actor": actor})).json()["items"]
    assert [item["client_id"] for item in listed] == [None]


async def test_a_malformed_header_is_ignored(client: httpx.AsyncClient) -> None:
    for value in ("has space", "x" * 129, ""):
        created = await client.post(AUDITS, json=record(), headers={"X-Client-ID": value})
        assert created.status_code == 201
        assert created.json()["client_id"] is None


async def test_the_body_cannot_set_it(client: httpx.AsyncClient) -> None:
    assert_problem(
        await client.post(AUDITS, json=record(client_id="forged")), 422, "validation_error"
    )
    record_id = (await client.post(AUDITS, json=record())).json()["id"]
    assert_problem(
        await client.put(f"{AUDITS}/{record_id}", json={"client_id": "forged"}),
        422,
        "validation_error",
    )


async def test_batch_and_export_carry_it(client: httpx.AsyncClient, actor: str) -> None:
    batch = await client.post(
        f"{AUDITS}/batch",
        json={"records": [record(actor=actor), record(actor=actor)]},
        headers={"X-Client-ID": "importer"},
    )
    assert batch.status_code == 201, batch.text
    assert [item["client_id"] for item in batch.json()["items"]] == ["importer", "importer"]
    events = await history(client, batch.json()["items"][0]["id"])
    assert [e["client_id"] for e in events] == ["importer"]

    exported = await client.get(f"{AUDITS}/export", params={"actor": actor, "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [row["client_id"] for row in rows] == ["importer", "importer"]


async def test_the_schema_documents_it_read_only(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert "client_id" in schemas["AuditRecordResponse"]["properties"]
    assert "client_id" in schemas["AuditRecordResponse"]["required"]
    for writable in ("AuditRecordCreate", "AuditRecordUpdate"):
        assert "client_id" not in schemas[writable]["properties"]
