"""The trail: events for every change, history, sealing, verification and the database's
refusal to let the trail be rewritten."""

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from audits_testkit import AUDITS, SERVICE_LOGIN
from trail_testkit import Trail, tampered, trail_database

from audits_service.roles import ensure_login_role, service_url
from audits_service.trail.locks import JobLock
from audits_service.trail.sealing import seal
from devstack.postgres import EmbeddedPostgres
from testkit.checks import assert_problem

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def trail(fresh_database_url: str) -> AsyncIterator[Trail]:
    async with trail_database(fresh_database_url) as trail:
        yield trail


async def test_every_operation_leaves_exactly_its_events(trail: Trail) -> None:
    client = trail.client
    created = await client.post(
        AUDITS,
        json={"action": "login", "actor": "a", "resource_type": "s"},
        headers={"X-Request-ID": "req-create"},
    )
    record_id = created.json()["id"]
    updated = await client.put(
        f"{AUDITS}/{record_id}", json={"status": "failure"}, headers={"X-Request-ID": "req-put"}
    )
    assert updated.status_code == 200
    deleted = await client.delete(f"{AUDITS}/{record_id}", headers={"X-Request-ID": "req-del"})
    assert deleted.status_code == 204
    assert (await client.get(f"{AUDITS}/{record_id}")).status_code == 404

    events = await trail.history(record_id)
    assert [(e["op"], e["request_id"]) for e in events] == [
        ("create", "req-create"),
        ("update", "req-put"),
        ("delete", "req-del"),
    ]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert all(e["client_id"] is None and e["record_id"] == record_id for e in events)
    assert events[0]["state"] == created.json() | {
        "created_at": events[0]["state"]["created_at"],
        "updated_at": events[0]["state"]["updated_at"],
    }
    assert events[1]["state"]["status"] == "failure"
    assert events[2]["state"] == events[1]["state"]
    assert all(e["hash"] is None for e in events)
    assert await trail.admin.fetchval("SELECT count(*) FROM audit_event") == 3

    assert await seal(trail.engine) == 3
    sealed = await trail.history(record_id)
    assert all(len(e["hash"]) == 64 for e in sealed)
    report = await trail.verify()
    assert report["status"] == "intact", report
    assert report["events_checked"] == 3
    assert report["checkpoints_checked"] == 1
    assert report["head"]["seq"] == sealed[-1]["seq"]
    assert report["head"]["hash"] == sealed[-1]["hash"]
    head = (await client.get(f"{AUDITS}/head")).json()
    assert head == report["head"]


async def test_failed_requests_leave_no_event(trail: Trail) -> None:
    record_id = (await trail.create())["id"]
    assert (await trail.client.put(f"{AUDITS}/{record_id}", json={})).status_code == 422
    missing = "01a215df-8c84-7376-862d-f9dc91ca4485"
    assert (await trail.client.delete(f"{AUDITS}/{missing}")).status_code == 404
    assert [e["op"] for e in await trail.history(record_id)] == ["create"]
    assert await trail.admin.fetchval("SELECT count(*) FROM audit_event") == 1


async def test_history_pages_and_unknown_ids(trail: Trail) -> None:
    record_id = (await trail.create())["id"]
    for number in range(4):
        await trail.client.put(f"{AUDITS}/{record_id}", json={"description": f"v{number}"})
    first = (await trail.client.get(f"{AUDITS}/{record_id}/history", params={"limit": 3})).json()
    assert len(first["items"]) == 3
    rest = await trail.client.get(
        f"{AUDITS}/{record_id}/history", params={"after": first["next_after"]}
    )
    assert [e["state"]["description"] for e in rest.json()["items"]] == ["v2", "v3"]
    assert rest.json()["next_after"] is None
    unknown = await trail.client.get(f"{AUDITS}/01a215df-8c84-7376-862d-f9dc91ca4485/history")
    assert_problem(unknown, 404, "not_found")
    assert_problem(await trail.client.get(f"{AUDITS}/not-a-uuid/history"), 422, "validation_error")
    bad = await trail.client.get(f"{AUDITS}/verify", params={"since_hash": "XYZ"})
    assert_problem(bad, 422, "validation_error")


async def test_a_change_by_hand_is_recorded(trail: Trail) -> None:
    record_id = (await trail.create())["id"]
    await trail.admin.execute(
        "UPDATE audit_record SET actor = 'mallory' WHERE id = $1::uuid", record_id
    )
    events = await trail.history(record_id)
    assert [(e["op"], e["request_id"]) for e in events] == [
        ("create", events[0]["request_id"]),
        ("update", None),
    ]
    assert events[1]["state"]["actor"] == "mallory"
    await seal(trail.engine)
    assert (await trail.verify())["status"] == "intact"


async def _sealed_trail(trail: Trail, rounds: int = 3, per_round: int = 4) -> list[str]:
    ids = []
    for _ in range(rounds):
        for _ in range(per_round):
            ids.append((await trail.create())["id"])
        await trail.client.put(f"{AUDITS}/{ids[-1]}", json={"status": "denied"})
        assert await seal(trail.engine)
    report = await trail.verify()
    assert report["status"] == "intact", report
    assert report["checkpoints_checked"] == rounds
    return ids


def _broken(report: dict[str, Any], seq: int | None, reason: str) -> None:
    assert report["status"] == "broken", report
    assert report["first_broken"]["seq"] == seq, report
    assert reason in report["first_broken"]["reason"], report


async def test_tampered_record_column_is_detected(trail: Trail) -> None:
    ids = await _sealed_trail(trail)
    await tampered(trail.admin, "UPDATE audit_record SET actor = 'x' WHERE id = $1::uuid", ids[5])
    last = (await trail.history(ids[5]))[-1]
    _broken(await trail.verify(), last["seq"], "record differs from its last event")


async def test_tampered_event_is_detected(trail: Trail) -> None:
    await _sealed_trail(trail)
    await tampered(
        trail.admin,
        "UPDATE audit_event SET state = jsonb_set(state, '{actor}', '\"x\"') WHERE seq = 6",
    )
    _broken(await trail.verify(), 6, "event hash mismatch")


async def test_deleted_event_is_detected(trail: Trail) -> None:
    await _sealed_trail(trail)
    await tampered(trail.admin, "DELETE FROM audit_event WHERE seq = 7")
    _broken(await trail.verify(), 7, "removed")


async def test_deleted_event_and_its_hash_are_detected(trail: Trail) -> None:
    await _sealed_trail(trail)
    await tampered(trail.admin, "DELETE FROM audit_event WHERE seq = 7")
    await tampered(trail.admin, "DELETE FROM audit_event_hash WHERE seq = 7")
    _broken(await trail.verify(), 8, "event hash mismatch")


async def test_deleted_checkpoint_is_detected(trail: Trail) -> None:
    await _sealed_trail(trail)
    first_of_second = await trail.admin.fetchval(
        "SELECT first_seq FROM audit_checkpoint WHERE id = 2"
    )
    await tampered(trail.admin, "DELETE FROM audit_checkpoint WHERE id = 2")
    report = await trail.verify()
    _broken(report, first_of_second, "checkpoint")


async def test_deleted_last_checkpoint_is_detected(trail: Trail) -> None:
    await _sealed_trail(trail)
    first_of_last = await trail.admin.fetchval(
        "SELECT first_seq FROM audit_checkpoint WHERE id = 3"
    )
    await tampered(trail.admin, "DELETE FROM audit_checkpoint WHERE id = 3")
    _broken(await trail.verify(), first_of_last, "checkpoint")


async def test_reordered_seq_is_detected(trail: Trail) -> None:
    await _sealed_trail(trail)
    for old, new in ((3, -1), (4, 3), (-1, 4)):
        await tampered(trail.admin, "UPDATE audit_event SET seq = $2 WHERE seq = $1", old, new)
    _broken(await trail.verify(), 3, "event hash mismatch")


async def test_truncated_tail_after_a_published_head_is_detected(trail: Trail) -> None:
    await _sealed_trail(trail, rounds=2)
    kept = await trail.verify()
    for _ in range(3):
        await trail.create()
    await seal(trail.engine)
    published = (await trail.client.get(f"{AUDITS}/head")).json()
    assert (await trail.verify(since_hash=published["hash"]))["status"] == "intact"

    # Roll the whole tail back consistently, records included: without the published head
    # nothing inside the database shows it.
    cut = kept["head"]["seq"]
    for statement in (
        "DELETE FROM audit_record WHERE id IN (SELECT record_id FROM audit_event WHERE seq > $1)",
        "DELETE FROM audit_event WHERE seq > $1",
        "DELETE FROM audit_event_hash WHERE seq > $1",
    ):
        await tampered(trail.admin, statement, cut)
    await tampered(trail.admin, "DELETE FROM audit_checkpoint WHERE id > 2")
    assert (await trail.verify())["status"] == "intact"
    _broken(await trail.verify(since_hash=published["hash"]), cut + 1, "since_hash")


async def test_the_service_role_cannot_rewrite_the_trail(
    trail: Trail, postgres: EmbeddedPostgres
) -> None:
    await _sealed_trail(trail, rounds=1)
    database = await trail.admin.fetchval("SELECT current_database()")
    service = await asyncpg.connect(
        postgres.url_for(database).replace("postgres@", f"{SERVICE_LOGIN}@")
    )
    try:
        for statement in (
            "UPDATE audit_event SET op = 'delete'",
            "DELETE FROM audit_event",
            "TRUNCATE audit_event",
            "INSERT INTO audit_event (record_id, op, state)"
            " VALUES (gen_random_uuid(), 'create', '{}')",
            "UPDATE audit_event_hash SET hash = '\\x00'",
            "DELETE FROM audit_event_hash",
            "UPDATE audit_checkpoint SET events = 0",
            "DELETE FROM audit_checkpoint",
            "TRUNCATE audit_record",
            "ALTER TABLE audit_record DISABLE TRIGGER audit_record_log_event",
            "SET session_replication_role = replica",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await service.execute(statement)
    finally:
        await service.close()
    # Even the owner is refused while the triggers are on.
    for statement in ("UPDATE audit_event SET op = 'delete'", "DELETE FROM audit_checkpoint"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await trail.admin.execute(statement)
    assert (await trail.verify())["status"] == "intact"


async def test_concurrent_writers_and_a_sealer(trail: Trail) -> None:
    stop = asyncio.Event()

    async def sealer() -> None:
        while not stop.is_set():
            await seal(trail.engine)
            await asyncio.sleep(0.01)

    running = asyncio.create_task(sealer())
    responses = await asyncio.gather(
        *(
            trail.client.post(
                AUDITS, json={"action": "read", "actor": f"w{n}", "resource_type": "r"}
            )
            for n in range(200)
        )
    )
    stop.set()
    await running
    acknowledged = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(acknowledged) == 200
    await seal(trail.engine)
    logged = {
        str(row[0])
        for row in await trail.admin.fetch("SELECT record_id FROM audit_event WHERE op = 'create'")
    }
    assert logged == acknowledged
    report = await trail.verify()
    assert report["status"] == "intact", report
    assert report["events_checked"] == 200


async def test_two_sealers_racing_make_one_chain(trail: Trail) -> None:
    stop = asyncio.Event()
    rounds: list[int | None] = []

    async def sealer() -> None:
        while not stop.is_set():
            rounds.append(await seal(trail.engine))

    async def writer(number: int) -> None:
        for _ in range(10):
            await trail.create(actor=f"writer-{number}")

    sealers = [asyncio.create_task(sealer()) for _ in range(2)]
    await asyncio.gather(*(writer(n) for n in range(10)))
    stop.set()
    await asyncio.gather(*sealers)
    await seal(trail.engine)
    ids = [row[0] for row in await trail.admin.fetch("SELECT id FROM audit_checkpoint ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1))
    assert None in rounds or len(ids) > 1
    report = await trail.verify()
    assert report["status"] == "intact", report
    assert report["events_checked"] == 100


async def test_a_sealer_waits_its_turn(trail: Trail) -> None:
    await trail.create()
    await trail.admin.execute("SELECT pg_advisory_lock($1)", int(JobLock.SEAL))
    try:
        assert await seal(trail.engine) is None
    finally:
        await trail.admin.execute("SELECT pg_advisory_unlock($1)", int(JobLock.SEAL))
    assert await seal(trail.engine) == 1


_INSERT_BY_HAND = (
    "INSERT INTO audit_record (action, actor, resource_type, request_id)"
    " VALUES ('read', 'slow', 'r', 'by-hand')"
)


async def test_an_event_committing_late_is_never_skipped(trail: Trail) -> None:
    """A transaction holding a lower seq commits after a higher seq is visible: the sealer
    seals only the gapless run before it, then everything once it has committed."""
    await trail.create()
    slow = await asyncpg.connect(trail.admin_url)
    try:
        transaction = slow.transaction()
        await transaction.start()
        await slow.execute(_INSERT_BY_HAND)
        await trail.create()
        assert await seal(trail.engine) == 1
        await transaction.commit()
    finally:
        await slow.close()
    assert await seal(trail.engine) == 2
    report = await trail.verify()
    assert report["status"] == "intact", report
    assert report["events_checked"] == 3


async def test_the_sealer_waits_for_writers_in_flight(trail: Trail) -> None:
    slow = await asyncpg.connect(trail.admin_url)
    try:
        transaction = slow.transaction()
        await transaction.start()
        await slow.execute(_INSERT_BY_HAND)
        await trail.create()
        sealing = asyncio.create_task(seal(trail.engine))
        await asyncio.sleep(0.3)
        assert not sealing.done()
        await transaction.commit()
        assert await sealing == 2
    finally:
        await slow.close()
    assert (await trail.verify())["events_checked"] == 2


async def test_a_rolled_back_seq_is_a_gap_the_chain_survives(trail: Trail) -> None:
    await trail.create()
    async with trail.admin.transaction():
        await trail.admin.execute(_INSERT_BY_HAND)
        await trail.admin.execute("SET LOCAL statement_timeout = 1")
        with pytest.raises(asyncpg.QueryCanceledError):
            await trail.admin.execute("SELECT pg_sleep(1)")
    await trail.create()
    assert await seal(trail.engine) == 2
    report = await trail.verify()
    assert report["status"] == "intact", report
    seqs = [row[0] for row in await trail.admin.fetch("SELECT seq FROM audit_event ORDER BY seq")]
    assert seqs == [1, 3]


VERIFY_EXPORT = Path(__file__).resolve().parents[1] / "scripts" / "verify_export.py"


async def _export(trail: Trail) -> list[bytes]:
    lines, after = [], 0
    while True:
        page = await trail.client.get(f"{AUDITS}/events", params={"after": after, "limit": 7})
        assert page.status_code == 200, page.text
        lines += [orjson.dumps(event) for event in page.json()["items"]]
        if page.json()["next_after"] is None:
            return lines
        after = page.json()["next_after"]


def _verify_export(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(VERIFY_EXPORT), str(path), *args],
        capture_output=True,
        text=True,
        check=False,
    )


async def test_an_export_reverifies_offline(trail: Trail, tmp_path: Path) -> None:
    await _sealed_trail(trail)
    await trail.create(metadata={"big": 10**20, "small": 1.5e-7, "text": "é\u2028\x01"})
    await seal(trail.engine)
    head = (await trail.client.get(f"{AUDITS}/head")).json()
    await trail.create()  # unsealed: listed with a null hash, not checked
    lines = await _export(trail)
    assert len(lines) == (await trail.admin.fetchval("SELECT count(*) FROM audit_event"))
    export = tmp_path / "events.ndjson"
    export.write_bytes(b"\n".join(lines) + b"\n")

    result = _verify_export(export, "--head", head["hash"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"intact: head seq {head['seq']} hash {head['hash']}"
    assert _verify_export(export, "--head", "0" * 64).returncode == 1

    event = orjson.loads(lines[5])
    event["state"]["actor"] = "mallory"
    export.write_bytes(b"\n".join([*lines[:5], orjson.dumps(event), *lines[6:]]) + b"\n")
    result = _verify_export(export)
    assert result.returncode == 1
    assert f"seq {event['seq']} does not match" in result.stderr


async def test_the_login_role_joins_the_group_and_keeps_its_password(trail: Trail) -> None:
    login = "audits_role_test"
    await ensure_login_role(trail.admin_url, login, "s3cret")
    await ensure_login_role(trail.admin_url, login, None)
    row = await trail.admin.fetchrow(
        "SELECT rolcanlogin, rolpassword IS NOT NULL AS has_password,"
        " pg_has_role(rolname, 'audits_app', 'MEMBER') AS member"
        " FROM pg_authid WHERE rolname = $1",
        login,
    )
    assert row is not None
    assert tuple(row) == (True, True, True)
    assert service_url(trail.admin_url, login, "p@ss").startswith(
        f"postgresql://{login}:p%40ss@127.0.0.1:"
    )
