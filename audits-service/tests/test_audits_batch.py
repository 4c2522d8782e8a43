"""POST /api/v1/audits/batch: all or nothing, 1-1000 records, idempotent like the single POST."""

from uuid import uuid4

import httpx
from audits_testkit import AUDITS, Record, record

from testkit.checks import assert_problem

BATCH = f"{AUDITS}/batch"


async def stored(client: httpx.AsyncClient, actor: str) -> list[Record]:
    """Every record of `actor`, newest first (cursor pages)."""
    items: list[Record] = []
    params: dict[str, str | int] = {"actor": actor, "limit": 50, "include_total": "false"}
    for _ in range(100):
        page = (await client.get(AUDITS, params=params)).json()
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]
    raise AssertionError("more pages than expected")


async def test_batch_stores_every_record_in_order(client: httpx.AsyncClient, actor: str) -> None:
    records = [
        record(actor=actor, action="login", metadata={"n": 0, "deep": {"x": [1, None]}}),
        record(actor=actor, action="logout", status="failure", ip_address="2001:0db8::1"),
        record(actor=actor, action="export", description='a, "quoted"\nline', resource_id=""),
    ]
    request_id = f"batch-{uuid4()}"
    response = await client.post(
        BATCH, json={"records": records}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert [item["action"] for item in items] == ["login", "logout", "export"]
    assert items[1]["ip_address"] == "2001:db8::1"
    assert items[0]["metadata"] == {"n": 0, "deep": {"x": [1, None]}}
    assert items[2]["resource_id"] == ""
    assert {item["request_id"] for item in items} == {request_id}
    assert len({item["id"] for item in items}) == 3
    # Newest first, as if the records had been posted one by one.
    assert await stored(client, actor) == items[::-1]
    for item in items:
        assert (await client.get(f"{AUDITS}/{item['id']}")).json() == item


async def test_one_invalid_record_rejects_the_batch(client: httpx.AsyncClient, actor: str) -> None:
    records = [record(actor=actor) for _ in range(5)]
    records[3] = record(actor="")
    records[4] = record(actor=actor, action="nope")
    response = await client.post(BATCH, json={"records": records})
    problem = assert_problem(response, 422, "validation_error")
    locs = [issue["loc"] for issue in problem["errors"]]
    assert ["body", "records", 3, "actor"] in locs
    assert ["body", "records", 4, "action"] in locs
    assert all(loc[:3] in (["body", "records", 3], ["body", "records", 4]) for loc in locs)
    assert await stored(client, actor) == []


async def test_a_thousand_records(client: httpx.AsyncClient, actor: str) -> None:
    records = [record(actor=actor, resource_id=str(n)) for n in range(1000)]
    response = await client.post(BATCH, json={"records": records})
    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert [item["resource_id"] for item in items] == [str(n) for n in range(1000)]
    listed = await stored(client, actor)
    assert [item["resource_id"] for item in listed] == [str(n) for n in reversed(range(1000))]


async def test_batch_size_limits(client: httpx.AsyncClient, actor: str) -> None:
    too_many = [record(actor=actor) for _ in range(1001)]
    problem = assert_problem(
        await client.post(BATCH, json={"records": too_many}), 422, "validation_error"
    )
    assert problem["errors"][0]["loc"] == ["body", "records"]
    problem = assert_problem(
        await client.post(BATCH, json={"records": []}), 422, "validation_error"
    )
    assert problem["errors"][0]["loc"] == ["body", "records"]
    for body in ({}, {"records": record()}, {"records": [record()], "extra": 1}, [record()]):
        assert_problem(await client.post(BATCH, json=body), 422, "validation_error")
    assert await stored(client, actor) == []


async def test_idempotent_batch(client: httpx.AsyncClient, actor: str) -> None:
    body = {"records": [record(actor=actor, resource_id=str(n)) for n in range(3)]}
    key = {"Idempotency-Key": str(uuid4())}
    first = await client.post(BATCH, json=body, headers=key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    replay = await client.post(BATCH, json=body, headers=key)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert len(await stored(client, actor)) == 3

    other = {"records": [record(actor=actor)]}
    assert_problem(await client.post(BATCH, json=other, headers=key), 422, "idempotency_key_reused")
    # The key names one request: a single create under it is another body.
    single = await client.post(AUDITS, json=body["records"][0], headers=key)
    assert_problem(single, 422, "idempotency_key_reused")
    assert len(await stored(client, actor)) == 3


async def test_invalid_batch_with_a_key_stores_no_key(
    client: httpx.AsyncClient, actor: str
) -> None:
    key = {"Idempotency-Key": str(uuid4())}
    bad = {"records": [record(actor=actor), record(actor="")]}
    assert_problem(await client.post(BATCH, json=bad, headers=key), 422, "validation_error")
    good = {"records": [record(actor=actor)]}
    response = await client.post(BATCH, json=good, headers=key)
    assert response.status_code == 201
    assert "idempotent-replayed" not in response.headers
