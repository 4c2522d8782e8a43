"""GET /api/v1/audits/export in-process: formats, filters, headers and validation."""

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from audits_testkit import AUDITS, Record, record

from audits_service.audits.schemas import AuditRecordResponse
from testkit.checks import assert_problem

EXPORT = f"{AUDITS}/export"
FIELDS = list(AuditRecordResponse.model_fields)


def from_csv(text: str) -> list[Record]:
    """CSV rows as the API's records: an empty field is null, metadata is JSON."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert reader.fieldnames == FIELDS
    rows: list[Record] = []
    for row in reader:
        item: dict[str, Any] = {name: value if value != "" else None for name, value in row.items()}
        item["metadata"] = json.loads(row["metadata"])
        rows.append(item)
    return rows


def blank_as_null(item: Record) -> Record:
    """CSV has no null: an empty string reads back as null."""
    return {name: None if value == "" else value for name, value in item.items()}


async def listed(client: httpx.AsyncClient, params: dict[str, str]) -> list[Record]:
    items: list[Record] = []
    query: dict[str, str | int] = {**params, "limit": 50, "include_total": "false"}
    for _ in range(1000):
        page = (await client.get(AUDITS, params=query)).json()
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        query["cursor"] = page["next_cursor"]
    raise AssertionError("more pages than expected")


@pytest.fixture
async def records(client: httpx.AsyncClient, actor: str) -> list[Record]:
    bodies = [
        record(actor=actor, action="login", description='comma, "quote"\r\nand newline'),
        record(actor=actor, action="logout", metadata={"é": ["ü", {"n": 1.5}], "k": None}),
        record(actor=actor, action="login", ip_address="::ffff:c000:201", user_agent="x,y"),
        record(actor=actor, action="export", resource_type="file", resource_id="r-1"),
        record(actor=actor, action="login", status="denied", description="=SUM(A1)"),
    ]
    response = await client.post(f"{AUDITS}/batch", json={"records": bodies})
    assert response.status_code == 201, response.text
    items: list[Record] = response.json()["items"]
    return items[::-1]


async def test_ndjson_equals_the_listing(
    client: httpx.AsyncClient, actor: str, records: list[Record]
) -> None:
    response = await client.get(EXPORT, params={"actor": actor})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="audits-')
    assert disposition.endswith('.ndjson"')
    assert response.text.endswith("\n")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == records == await listed(client, {"actor": actor})


async def test_csv_equals_the_listing(
    client: httpx.AsyncClient, actor: str, records: list[Record]
) -> None:
    response = await client.get(EXPORT, params={"actor": actor, "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8; header=present"
    assert response.headers["content-disposition"].endswith('.csv"')
    text = response.text
    assert text.startswith(",".join(FIELDS) + "\r\n")
    assert text.endswith("\r\n")
    assert from_csv(text) == [blank_as_null(item) for item in records]
    # RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
    assert '"comma, ""quote""\r\nand newline"' in text


# Each of OWASP's formula starts, the escape character itself, and text that only holds one.
FORMULAS = ("=SUM(A1)", "+1", "-2+3", "@cmd", "\tTAB", "\rCR", "'quoted", "a=b", "", "x-@")


async def test_csv_with_formulas_escaped_is_reversible(
    client: httpx.AsyncClient, actor: str
) -> None:
    bodies = [
        record(actor=actor, description=text, resource_id=text, user_agent=text)
        for text in FORMULAS
    ]
    created = await client.post(f"{AUDITS}/batch", json={"records": bodies})
    assert created.status_code == 201, created.text
    query = {"actor": actor, "format": "csv"}
    plain = from_csv((await client.get(EXPORT, params=query)).text)
    escaped = await client.get(EXPORT, params={**query, "escape_formulas": "true"})
    assert escaped.status_code == 200
    assert escaped.headers["content-type"] == "text/csv; charset=utf-8; header=present"
    rows = from_csv(escaped.text)
    for row in rows:
        text = row["description"] or ""
        assert row["resource_id"] == row["user_agent"] == row["description"]
        # No field a spreadsheet would run: each one that starts like a formula is quoted.
        assert not text.startswith(("=", "+", "-", "@", "\t", "\r")), text
    # The stored values, from the escaped file by removing one leading quote per field.
    unescaped = [
        {k: v[1:] if isinstance(v, str) and v.startswith("'") else v for k, v in row.items()}
        for row in rows
    ]
    assert unescaped == plain == [blank_as_null(r) for r in await listed(client, {"actor": actor})]
    assert sorted(r["description"] or "" for r in plain) == sorted(FORMULAS)
    # JSON strings are never run as formulas: NDJSON ignores the option.
    ndjson = {"actor": actor, "format": "ndjson"}
    as_is = await client.get(EXPORT, params=ndjson)
    assert (
        await client.get(EXPORT, params={**ndjson, "escape_formulas": "true"})
    ).text == as_is.text


@pytest.mark.parametrize(
    ("params", "wanted"),
    [
        ({"action": "login"}, lambda r: r["action"] == "login"),
        ({"status": "denied"}, lambda r: r["status"] == "denied"),
        ({"resource_type": "file", "resource_id": "r-1"}, lambda r: r["resource_id"] == "r-1"),
        ({"action": "read"}, lambda r: False),
    ],
)
async def test_filters_as_in_the_listing(
    client: httpx.AsyncClient,
    actor: str,
    records: list[Record],
    params: dict[str, str],
    wanted: Any,
) -> None:
    query = {"actor": actor, **params}
    ndjson = (await client.get(EXPORT, params=query)).text
    exported = [json.loads(line) for line in ndjson.splitlines()]
    assert exported == [item for item in records if wanted(item)]
    assert exported == await listed(client, query)
    csv_text = (await client.get(EXPORT, params={**query, "format": "csv"})).text
    assert from_csv(csv_text) == [blank_as_null(item) for item in exported]


async def test_time_range(client: httpx.AsyncClient, actor: str, records: list[Record]) -> None:
    created = datetime.fromisoformat(records[0]["created_at"])
    inside = {
        "actor": actor,
        "created_from": (created - timedelta(seconds=1)).isoformat(),
        "created_to": (created + timedelta(seconds=1)).isoformat(),
    }
    assert len((await client.get(EXPORT, params=inside)).text.splitlines()) == len(records)
    future = {"actor": actor, "created_from": (datetime.now(UTC) + timedelta(days=1)).isoformat()}
    empty = await client.get(EXPORT, params=future)
    assert empty.status_code == 200
    assert empty.text == ""
    empty_csv = await client.get(EXPORT, params={**future, "format": "csv"})
    assert empty_csv.text == ",".join(FIELDS) + "\r\n"


@pytest.mark.parametrize(
    "params",
    [
        {"format": "xml"},
        {"limit": "10"},
        {"cursor": "x"},
        {"action": "nope"},
        {"created_from": "2026-02-01T00:00:00Z", "created_to": "2026-01-01T00:00:00Z"},
        {"created_from": "0.5"},
        {"format": "csv", "escape_formulas": "maybe"},
    ],
)
async def test_invalid_queries(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    assert_problem(await client.get(EXPORT, params=params), 422, "validation_error")


async def test_openapi_documents_both_media_types(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"][EXPORT]["get"]
    content = operation["responses"]["200"]["content"]
    assert set(content) == {"application/x-ndjson", "text/csv; charset=utf-8; header=present"}
    assert all("example" in media for media in content.values())
    assert "Content-Disposition" in operation["responses"]["200"]["headers"]
    names = {parameter["name"] for parameter in operation["parameters"]}
    filters = {"action", "status", "actor", "resource_type", "resource_id"}
    assert names == {"format", "escape_formulas", "created_from", "created_to", *filters}
    batch = document["paths"][f"{AUDITS}/batch"]["post"]
    assert {"201", "409", "422", "503"} <= set(batch["responses"])


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", EXPORT, "GET, HEAD"),
        ("DELETE", EXPORT, "GET, HEAD"),
        ("GET", f"{AUDITS}/batch", "POST"),
        ("PUT", f"{AUDITS}/batch", "POST"),
    ],
)
async def test_fixed_paths_are_not_record_ids(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path, json={})
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allowed
