"""Idempotency-Key on POST: replay, reuse with another body, in-flight repeats, expiry."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from uuid import uuid4

import asyncpg
import httpx
import pytest
from audits_testkit import AUDITS, record
from sqlalchemy.ext.asyncio import create_async_engine

from audits_service.audits.service import purge_expired_keys
from audits_service.config import Settings
from testkit.checks import assert_problem

pytestmark = pytest.mark.asyncio(loop_scope="session")

LOCK_SEED = 0x6175646974


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the service's database, beside the service's own pool."""
    url = settings.database_url.get_secret_value().replace("+asyncpg", "")
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


async def purge_expired(settings: Settings) -> int:
    engine = create_async_engine(settings.database_url.get_secret_value())
    try:
        return await purge_expired_keys(engine)
    finally:
        await engine.dispose()


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def count_for(client: httpx.AsyncClient, actor: str) -> int:
    page = (await client.get(AUDITS, params={"actor": actor})).json()
    total: int = page["total"]
    return total


async def test_replay_returns_the_original_201(client: httpx.AsyncClient, actor: str) -> None:
    key = str(uuid4())
    body = record(actor=actor, metadata={"b": 1, "a": [1, 2]})
    first = await client.post(AUDITS, json=body, headers=keyed(key))
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    # Same content, other key order and the default spelled out: the same request.
    same = {"status": "success", **dict(reversed(list(body.items())))}
    second = await client.post(AUDITS, json=same, headers=keyed(key))
    assert second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert second.headers["location"] == first.headers["location"]
    assert await count_for(client, actor) == 1


async def test_reuse_with_another_body_is_422(client: httpx.AsyncClient, actor: str) -> None:
    key = str(uuid4())
    assert (
        await client.post(AUDITS, json=record(actor=actor), headers=keyed(key))
    ).status_code == 201
    other = await client.post(AUDITS, json=record(actor=actor, action="logout"), headers=keyed(key))
    assert_problem(other, 422, "idempotency_key_reused")
    assert await count_for(client, actor) == 1


async def test_repeat_while_in_flight_is_409(
    client: httpx.AsyncClient, audits_settings: Settings, actor: str
) -> None:
    key = str(uuid4())
    # Hold the key's lock the way an in-flight first request does.
    async with database(audits_settings) as connection:
        await connection.execute(
            "SELECT pg_advisory_lock(hashtextextended($1, $2))", key, LOCK_SEED
        )
        response = await client.post(AUDITS, json=record(actor=actor), headers=keyed(key))
        problem = assert_problem(response, 409, "idempotency_in_progress")
        assert "still being processed" in problem["detail"]
        assert response.headers["retry-after"] == "1"
    assert await count_for(client, actor) == 0
    created = await client.post(AUDITS, json=record(actor=actor), headers=keyed(key))
    assert created.status_code == 201


async def test_concurrent_repeats_create_one_record(client: httpx.AsyncClient, actor: str) -> None:
    key = str(uuid4())
    body = record(actor=actor)
    responses = await asyncio.gather(
        *(client.post(AUDITS, json=body, headers=keyed(key)) for _ in range(20))
    )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}, statuses
    ids = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(ids) == 1
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "idempotency_in_progress")
    assert await count_for(client, actor) == 1


async def test_keys_expire_after_the_ttl(
    client: httpx.AsyncClient, audits_settings: Settings, actor: str
) -> None:
    key = str(uuid4())
    first = await client.post(AUDITS, json=record(actor=actor), headers=keyed(key))
    async with database(audits_settings) as connection:
        lifetime = await connection.fetchval(
            "SELECT expires_at - created_at FROM idempotency_key WHERE key = $1", key
        )
        assert lifetime == timedelta(seconds=audits_settings.idempotency_ttl)
        await connection.execute(
            "UPDATE idempotency_key SET expires_at = now() - interval '1 second' WHERE key = $1",
            key,
        )
        # Expired: the key is free again, even for another body.
        second = await client.post(
            AUDITS, json=record(actor=actor, action="logout"), headers=keyed(key)
        )
        assert second.status_code == 201
        assert "idempotent-replayed" not in second.headers
        assert second.json()["id"] != first.json()["id"]
        await connection.execute(
            "UPDATE idempotency_key SET expires_at = now() - interval '1 second' WHERE key = $1",
            key,
        )
        assert await purge_expired(audits_settings) >= 1
        assert (
            await connection.fetchval("SELECT count(*) FROM idempotency_key WHERE key = $1", key)
            == 0
        )
    assert await count_for(client, actor) == 2


async def test_replay_survives_a_later_update_or_delete(
    client: httpx.AsyncClient, actor: str
) -> None:
    key = str(uuid4())
    body = record(actor=actor)
    first = (await client.post(AUDITS, json=body, headers=keyed(key))).json()
    await client.delete(f"{AUDITS}/{first['id']}")
    replay = await client.post(AUDITS, json=body, headers=keyed(key))
    assert replay.status_code == 201
    assert replay.json() == first


@pytest.mark.parametrize("key", ["", "x" * 256, "spaces are not allowed", "ünïcode"])
async def test_malformed_keys_are_422(client: httpx.AsyncClient, key: str) -> None:
    response = await client.post(AUDITS, json=record(), headers={b"Idempotency-Key": key.encode()})
    assert_problem(response, 422, "validation_error")


def as_client(client_id: str, key: str) -> dict[str, str]:
    return {"Idempotency-Key": key, "X-Client-ID": client_id}


async def test_keys_are_each_clients_own(client: httpx.AsyncClient, actor: str) -> None:
    key = str(uuid4())
    body = record(actor=actor)
    anonymous = await client.post(AUDITS, json=body, headers=keyed(key))
    alice = await client.post(AUDITS, json=body, headers=as_client("alice", key))
    bob = await client.post(AUDITS, json=body, headers=as_client("bob", key))
    firsts = [anonymous, alice, bob]
    assert [r.status_code for r in firsts] == [201, 201, 201]
    assert not any("idempotent-replayed" in r.headers for r in firsts)
    assert len({r.json()["id"] for r in firsts}) == 3
    assert [r.json()["client_id"] for r in firsts] == [None, "alice", "bob"]

    # Each replays its own, and another body under the key is only its own reuse.
    assert (
        await client.post(AUDITS, json=body, headers=as_client("bob", key))
    ).json() == bob.json()
    assert (await client.post(AUDITS, json=body, headers=keyed(key))).json() == anonymous.json()
    other = record(actor=actor, action="logout")
    assert_problem(
        await client.post(AUDITS, json=other, headers=as_client("alice", key)),
        422,
        "idempotency_key_reused",
    )
    assert (
        await client.post(AUDITS, json=other, headers=as_client("carol", key))
    ).status_code == 201
    assert await count_for(client, actor) == 4


async def test_one_clients_key_in_flight_does_not_hold_up_another(
    client: httpx.AsyncClient, audits_settings: Settings, actor: str
) -> None:
    key = str(uuid4())
    async with database(audits_settings) as connection:
        await connection.execute(
            "SELECT pg_advisory_lock(hashtextextended($1, $2))", f"alice\n{key}", LOCK_SEED
        )
        held = await client.post(AUDITS, json=record(actor=actor), headers=as_client("alice", key))
        assert_problem(held, 409, "idempotency_in_progress")
        for headers in (as_client("bob", key), keyed(key)):
            response = await client.post(AUDITS, json=record(actor=actor), headers=headers)
            assert response.status_code == 201, response.text


async def test_purging_one_clients_expired_key_keeps_anothers(
    client: httpx.AsyncClient, audits_settings: Settings, actor: str
) -> None:
    key = str(uuid4())
    body = record(actor=actor)
    bob = await client.post(AUDITS, json=body, headers=as_client("bob", key))
    await client.post(AUDITS, json=body, headers=as_client("alice", key))
    async with database(audits_settings) as connection:
        await connection.execute(
            "UPDATE idempotency_key SET expires_at = now() - interval '1 second'"
            " WHERE key = $1 AND client_id = 'alice'",
            key,
        )
        assert await purge_expired(audits_settings) >= 1
        left = await connection.fetch("SELECT client_id FROM idempotency_key WHERE key = $1", key)
        assert [row["client_id"] for row in left] == ["bob"]
    replay = await client.post(AUDITS, json=body, headers=as_client("bob", key))
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == bob.json()
