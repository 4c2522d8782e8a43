"""Listing: order, filters, limits, totals, offset and keyset pagination."""

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated
from uuid import uuid4

import httpx
import pytest
from audits_testkit import AUDITS, Params, Record, record
from fastapi import FastAPI, Query
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from audits_service.audits.models import audit_record, uuid7
from audits_service.audits.schemas import AuditListParams
from audits_service.audits.service import _page_text
from audits_service.config import Settings
from audits_service.database import driver_connection
from audits_service.main import create_app
from testkit.checks import assert_problem

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def create_many(client: httpx.AsyncClient, count: int, **fields: object) -> list[Record]:
    created = []
    for _ in range(count):
        response = await client.post(AUDITS, json=record(**fields))
        assert response.status_code == 201, response.text
        created.append(response.json())
    return created


def newest_first(records: list[Record]) -> list[str]:
    ordered = sorted(records, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    return [r["id"] for r in ordered]


async def walk_cursor(
    client: httpx.AsyncClient, params: Params, max_pages: int = 100
) -> list[Record]:
    seen: list[Record] = []
    cursor = None
    for _ in range(max_pages):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(AUDITS, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("cursor pagination did not end")


async def test_page_shape_newest_first_and_default_limit(
    client: httpx.AsyncClient, actor: str
) -> None:
    created = await create_many(client, 23, actor=actor)
    response = await client.get(AUDITS, params={"actor": actor})
    assert response.status_code == 200
    page = response.json()
    assert set(page) == {"items", "total", "limit", "offset", "next_cursor"}
    assert page["total"] == 23
    assert page["limit"] == 20
    assert page["offset"] == 0
    assert [item["id"] for item in page["items"]] == newest_first(created)[:20]
    assert page["next_cursor"]


async def test_offset_pagination(client: httpx.AsyncClient, actor: str) -> None:
    created = await create_many(client, 7, actor=actor)
    ids = []
    for offset in range(0, 9, 3):
        page = (
            await client.get(AUDITS, params={"actor": actor, "limit": 3, "offset": offset})
        ).json()
        assert page["offset"] == offset
        assert page["total"] == 7
        ids += [item["id"] for item in page["items"]]
    assert ids == newest_first(created)
    beyond = (await client.get(AUDITS, params={"actor": actor, "offset": 50})).json()
    assert beyond["items"] == []
    assert beyond["next_cursor"] is None


async def test_include_total_false(client: httpx.AsyncClient, actor: str) -> None:
    await create_many(client, 2, actor=actor)
    page = (await client.get(AUDITS, params={"actor": actor, "include_total": "false"})).json()
    assert page["total"] is None
    assert len(page["items"]) == 2


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 51},
        {"limit": "x"},
        {"offset": -1},
        {"action": "destroy"},
        {"status": "maybe"},
        {"created_from": "yesterday"},
        {"created_from": "2030-01-02T00:00:00Z", "created_to": "2030-01-01T00:00:00Z"},
        {"actor": "a\x00"},
        {"actor": "a" * 256},
        {"include_total": "perhaps"},
        {"cursor": "not-a-cursor"},
        {"cursor": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
        {"cursor": "é"},
    ],
)
async def test_invalid_queries_are_422(client: httpx.AsyncClient, params: Params) -> None:
    assert_problem(await client.get(AUDITS, params=params), 422, "validation_error")


async def test_query_errors_name_the_parameter_under_query(client: httpx.AsyncClient) -> None:
    response = await client.get(AUDITS, params={"limit": "x", "offset": -1})
    problem = assert_problem(response, 422, "validation_error")
    assert [error["loc"] for error in problem["errors"]] == [
        ["query", "limit"],
        ["query", "offset"],
    ]
    period = {"created_from": "2030-01-02T00:00:00Z", "created_to": "2030-01-01T00:00:00Z"}
    problem = assert_problem(await client.get(AUDITS, params=period), 422, "validation_error")
    assert [error["loc"] for error in problem["errors"]] == [["query"]]


async def test_last_repeated_value_counts_and_unknown_parameters_are_ignored(
    client: httpx.AsyncClient, actor: str
) -> None:
    await create_many(client, 3, actor=actor)
    query = f"actor={actor}&limit=x&limit=2&colour=blue&include_total=false"
    page = (await client.get(f"{AUDITS}?{query}")).json()
    assert (len(page["items"]), page["limit"], page["total"]) == (2, 2, None)


async def test_list_parameters_are_documented_as_fastapi_documents_the_query_model(
    audits_settings: Settings,
) -> None:
    documented = FastAPI()

    @documented.get(AUDITS)
    async def listing(params: Annotated[AuditListParams, Query()]) -> None: ...

    expected = documented.openapi()["paths"][AUDITS]["get"]["parameters"]
    app = create_app(audits_settings).openapi()
    assert app["paths"][AUDITS]["get"]["parameters"] == expected
    # The parameters' references resolve in the service's own document.
    assert {"AuditAction", "AuditStatus"} <= app["components"]["schemas"].keys()


async def test_cursor_with_offset_is_422(client: httpx.AsyncClient, actor: str) -> None:
    await create_many(client, 2, actor=actor)
    page = (await client.get(AUDITS, params={"actor": actor, "limit": 1})).json()
    response = await client.get(AUDITS, params={"cursor": page["next_cursor"], "offset": 1})
    assert_problem(response, 422, "validation_error")


async def test_tampered_cursor_is_422_not_500(client: httpx.AsyncClient, actor: str) -> None:
    await create_many(client, 2, actor=actor)
    cursor = (await client.get(AUDITS, params={"actor": actor, "limit": 1})).json()["next_cursor"]
    for tampered in (cursor[:-1], cursor + "A", cursor[::-1] + "!", "=" * 32, cursor.upper()):
        response = await client.get(AUDITS, params={"cursor": tampered})
        assert response.status_code in {200, 422}, response.text
        if response.status_code == 422:
            assert_problem(response, 422, "validation_error")


async def test_filters(client: httpx.AsyncClient, actor: str) -> None:
    kind = f"kind-{uuid4()}"
    login = await client.post(AUDITS, json=record(actor=actor, resource_type=kind, resource_id="1"))
    failed = await client.post(
        AUDITS,
        json=record(actor=actor, resource_type=kind, action="export", status="failure"),
    )
    other = await client.post(AUDITS, json=record(resource_type=kind, resource_id="2"))
    login_id, failed_id, other_id = (r.json()["id"] for r in (login, failed, other))

    async def ids(**params: str | int) -> set[str]:
        page = (await client.get(AUDITS, params={"resource_type": kind, **params})).json()
        assert page["total"] == len(page["items"])
        return {item["id"] for item in page["items"]}

    assert await ids() == {login_id, failed_id, other_id}
    assert await ids(actor=actor) == {login_id, failed_id}
    assert await ids(action="export") == {failed_id}
    assert await ids(status="failure") == {failed_id}
    assert await ids(status="success", actor=actor) == {login_id}
    assert await ids(resource_id="2") == {other_id}
    page = (await client.get(AUDITS, params={"resource_id": "1", "actor": actor})).json()
    assert [item["id"] for item in page["items"]] == [login_id]


async def test_created_range_is_inclusive(client: httpx.AsyncClient, actor: str) -> None:
    first, second, third = await create_many(client, 3, actor=actor)

    async def ids(**params: str | int) -> list[str]:
        page = (await client.get(AUDITS, params={"actor": actor, **params})).json()
        return [item["id"] for item in page["items"]]

    assert await ids(created_from=second["created_at"]) == [third["id"], second["id"]]
    assert await ids(created_to=second["created_at"]) == [second["id"], first["id"]]
    both = await ids(created_from=second["created_at"], created_to=second["created_at"])
    assert both == [second["id"]]
    naive = datetime.fromisoformat(first["created_at"]).replace(tzinfo=None).isoformat()
    assert await ids(created_from=naive) == [third["id"], second["id"], first["id"]]
    plus_two = datetime.fromisoformat(second["created_at"]).astimezone(timezone(timedelta(hours=2)))
    assert await ids(created_from=plus_two.isoformat()) == [third["id"], second["id"]]


async def test_cursor_visits_every_record_once_across_equal_timestamps(
    client: httpx.AsyncClient, audits_settings: Settings, actor: str
) -> None:
    """Rows sharing one created_at are ordered by id, and no page boundary loses one."""
    moment = datetime.now(UTC).replace(microsecond=0)
    rows = [
        {
            "id": uuid7(),
            "action": "read",
            "actor": actor,
            "resource_type": "doc",
            "request_id": "seed",
            "created_at": moment - timedelta(seconds=i // 10),
            "updated_at": moment,
        }
        for i in range(45)
    ]
    engine = create_async_engine(audits_settings.database_url.get_secret_value())
    async with engine.begin() as connection:
        await connection.execute(insert(audit_record), rows)
    await engine.dispose()

    seen = await walk_cursor(client, {"actor": actor, "limit": 7, "include_total": "false"})
    expected = sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    assert [item["id"] for item in seen] == [str(r["id"]) for r in expected]


@pytest.mark.parametrize("cursor", [False, True])
async def test_a_page_is_read_in_the_order_of_its_index(
    audits_settings: Settings, cursor: bool
) -> None:
    """The page reads its ids as text: its ORDER BY must still name the uuid column, which
    the (created_at, id) index is sorted by, or every page becomes a sort."""
    engine = create_async_engine(audits_settings.database_url.get_secret_value())
    page, order = _page_text(engine.dialect, frozenset(), cursor)
    values = {"limit": 51, "offset": 0, "after_created_at": datetime.now(UTC), "after_id": uuid7()}
    try:
        async with engine.connect() as connection:
            # A test table is small enough for a scan and a sort to look cheaper.
            await connection.exec_driver_sql("SET enable_seqscan = off")
            await connection.exec_driver_sql("SET enable_bitmapscan = off")
            driver = await driver_connection(connection)
            plan = await driver.fetchval(
                f"EXPLAIN (FORMAT JSON) {page}", *(values[name] for name in order)
            )
    finally:
        await engine.dispose()
    text = json.dumps(plan)
    assert "ix_audit_record_created_at_id" in text, text
    assert "Sort" not in text, text


async def test_cursor_walk_while_records_are_inserted(client: httpx.AsyncClient) -> None:
    kind = f"kind-{uuid4()}"
    original = await create_many(client, 40, resource_type=kind)
    stop = asyncio.Event()

    async def keep_inserting() -> int:
        inserted = 0
        while not stop.is_set() and inserted < 200:
            response = await client.post(AUDITS, json=record(resource_type=kind))
            assert response.status_code == 201
            inserted += 1
            await asyncio.sleep(0)
        return inserted

    writers = [asyncio.create_task(keep_inserting()) for _ in range(3)]
    try:
        seen = await walk_cursor(client, {"resource_type": kind, "limit": 6})
    finally:
        stop.set()
        inserted = sum(await asyncio.gather(*writers))
    assert inserted > 0
    seen_ids = [item["id"] for item in seen]
    assert len(seen_ids) == len(set(seen_ids)), "a record was visited twice"
    assert {r["id"] for r in original} <= set(seen_ids), "a record was skipped"
    assert seen_ids == newest_first(seen)


async def test_200_concurrent_creates_all_succeed_and_are_readable(
    client: httpx.AsyncClient, actor: str
) -> None:
    responses = await asyncio.gather(
        *(client.post(AUDITS, json=record(actor=actor, metadata={"n": n})) for n in range(200))
    )
    assert [r.status_code for r in responses] == [201] * 200
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 200
    seen = await walk_cursor(client, {"actor": actor, "limit": 50})
    assert {item["id"] for item in seen} == ids
    assert sorted(item["metadata"]["n"] for item in seen) == list(range(200))
    one = responses[123].json()
    assert (await client.get(f"{AUDITS}/{one['id']}")).json() == one
