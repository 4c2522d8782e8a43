"""Upstream failures as the gateway's clients see them.

The audits service killed and restarted mid-load: quick 502 problems, then recovery with
the same gateway process. The OpenAI stand-in dropping the connection mid-stream: the
client gets an `error` event carrying a problem and the stream ends; nothing hangs.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import orjson
import pytest

from devstack.openai_standin import Fault, OpenAIStandin
from devstack.postgres import free_port
from tests.e2e_stack import STANDIN_API_KEY, StartService, gateway_env, llm_env

# A refused connection is answered at once; this bounds "quickly" on a loaded machine.
QUICK_502_S = 2.0
WORKERS = 6


async def _load(
    client: httpx.AsyncClient, stop: asyncio.Event, seen: list[tuple[float, int, str, float]]
) -> None:
    while not stop.is_set():
        started = time.monotonic()
        response = await client.get("/api/v1/audits", params={"limit": 5})
        code = response.json().get("code", "") if response.status_code != 200 else ""
        seen.append((started, response.status_code, code, time.monotonic() - started))
        # Back off on failures, as a client would, so the restart is not starved of CPU.
        await asyncio.sleep(0.01 if response.status_code == 200 else 0.1)


async def test_audits_killed_and_restarted_under_load(
    service_database_url: str, start_service: StartService
) -> None:
    audits_env = {"DATABASE_URL": service_database_url}
    audits = start_service("audits", audits_env)
    gateway = start_service("gateway", gateway_env(audits.url, f"http://127.0.0.1:{free_port()}"))
    seen: list[tuple[float, int, str, float]] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        workers = [asyncio.create_task(_load(client, stop, seen)) for _ in range(WORKERS)]
        await asyncio.sleep(0.5)
        audits.kill()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(start_service, "audits", audits_env, audits.port)
        restarted_at = time.monotonic()
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)
    statuses = Counter((status, code) for _, status, code, _ in seen)
    assert set(statuses) <= {(200, ""), (502, "upstream_unavailable")}, statuses
    assert statuses[(502, "upstream_unavailable")] > 0, statuses
    assert max(elapsed for _, status, _, elapsed in seen if status == 502) < QUICK_502_S
    # Recovered without restarting the gateway: everything sent after the restart worked.
    after = [status for started, status, _, _ in seen if started > restarted_at]
    assert after, "no request was sent after the restart"
    assert set(after) == {200}, Counter(after)


@pytest.fixture
def dropping_standin() -> Iterator[OpenAIStandin]:
    with OpenAIStandin(api_key=STANDIN_API_KEY, chunk_delay=0.05) as server:
        yield server


def _events(raw: str) -> list[tuple[str, str]]:
    events = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
        events.append((name, "\n".join(data)))
    return events


async def test_stream_dropped_upstream_ends_with_an_error_event(
    dropping_standin: OpenAIStandin, start_service: StartService
) -> None:
    llm = start_service("llm", llm_env(dropping_standin))
    gateway = start_service("gateway", gateway_env(f"http://127.0.0.1:{free_port()}", llm.url))
    dropping_standin.script(Fault.drop_after(3))
    body = {"messages": [{"role": "user", "content": "Say hello"}], "stream": True}
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        client.stream("POST", "/api/v1/openai/chat", json=body) as response,
    ):
        assert response.status_code == 200
        raw = (await asyncio.wait_for(response.aread(), timeout=15)).decode()
    events = _events(raw)
    assert events, raw
    name, data = events[-1]
    assert name == "error", events
    problem = orjson.loads(data)
    assert problem["status"] >= 500
    assert problem["code"] in {"upstream_error", "upstream_unavailable"}, problem
    assert all(n != "error" for n, _ in events[:-1])
