"""Graceful shutdown under load: readiness 503 first, a drain, then in-flight work finishes.

SIGTERM reaches the llm service and then the gateway while a slow stream from the OpenAI
stand-in runs through both: readiness turns 503 at once, both keep serving for the
drain period, the stream completes with `[DONE]`, and both exit cleanly. SIGTERM to the
audits service under write load: every answered request is a 201, and the only failures
are refused connections once it stopped listening, after the drain.
"""

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from devstack.openai_standin import OpenAIStandin
from devstack.postgres import free_port
from devstack.processes import ServiceProcess
from tests.e2e_stack import STANDIN_API_KEY, StartService, gateway_env, llm_env

DRAIN_S = 1.5
# 40 words at 0.1 s each: the stream outlives the drain by far, not the 10 s grace period.
SLOW_REPLY = " ".join(f"word{i}" for i in range(40))


@pytest.fixture
def slow_standin() -> Iterator[OpenAIStandin]:
    with OpenAIStandin(api_key=STANDIN_API_KEY, reply=SLOW_REPLY, chunk_delay=0.1) as server:
        yield server


def _sigterm(service: ServiceProcess) -> None:
    assert service.process is not None
    service.process.send_signal(signal.SIGTERM)


async def _exited_cleanly(service: ServiceProcess, limit_s: float = 20.0) -> bool:
    """uvicorn re-raises the signal once it has shut down, so -SIGTERM is a clean exit."""
    assert service.process is not None
    code = await asyncio.to_thread(service.process.wait, limit_s)
    return code in {0, -signal.SIGTERM}


async def test_sigterm_drains_and_finishes_a_stream_through_llm_and_gateway(
    slow_standin: OpenAIStandin, start_service: StartService
) -> None:
    drain = {"SHUTDOWN_DRAIN_SECONDS": str(DRAIN_S)}
    llm = start_service("llm", llm_env(slow_standin) | drain)
    gateway = start_service(
        "gateway", gateway_env(f"http://127.0.0.1:{free_port()}", llm.url) | drain
    )
    body = {"messages": [{"role": "user", "content": "Talk slowly"}], "stream": True}
    first_event = asyncio.Event()

    async def stream(client: httpx.AsyncClient) -> tuple[int, str]:
        chunks: list[str] = []
        async with client.stream("POST", "/api/v1/openai/chat", json=body) as response:
            async for chunk in response.aiter_text():
                chunks.append(chunk)
                first_event.set()
        return response.status_code, "".join(chunks)

    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=20) as client,
        httpx.AsyncClient(timeout=5) as probe,
    ):
        in_flight = asyncio.create_task(stream(client))
        await asyncio.wait_for(first_event.wait(), 10)

        _sigterm(llm)
        await asyncio.sleep(0.2)
        ready = await probe.get(f"{llm.url}/health/ready")
        assert ready.status_code == 503
        assert ready.json()["code"] == "shutting_down"
        # Still serving during the drain: a load balancer may not have noticed yet.
        assert (await probe.get(f"{llm.url}/health")).status_code == 200

        _sigterm(gateway)
        await asyncio.sleep(0.2)
        assert (await probe.get(f"{gateway.url}/health/ready")).status_code == 503
        assert (await probe.get(f"{gateway.url}/")).status_code == 200

        status, raw = await asyncio.wait_for(in_flight, 15)

    assert status == 200
    assert "event: error" not in raw
    assert "word39" in raw
    assert raw.rstrip().endswith("data: [DONE]")
    assert await _exited_cleanly(llm)
    assert await _exited_cleanly(gateway)
    async with httpx.AsyncClient(timeout=2) as late:
        with pytest.raises(httpx.ConnectError):
            await late.get(f"{gateway.url}/health")


async def test_sigterm_under_write_load_answers_every_request_it_accepted(
    service_database_url: str, start_service: StartService
) -> None:
    audits = start_service(
        "audits",
        {"DATABASE_URL": service_database_url, "SHUTDOWN_DRAIN_SECONDS": str(DRAIN_S)},
    )
    answered: Counter[int] = Counter()
    refused_at: list[float] = []
    stop = asyncio.Event()

    async def write(client: httpx.AsyncClient, worker: int) -> None:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            record = {"action": "create", "actor": f"w{worker}", "resource_type": "shutdown"}
            try:
                response = await client.post("/api/v1/audits", json=record)
            except httpx.TransportError:
                refused_at.append(time.monotonic())
                await asyncio.sleep(0.05)
                continue
            answered[response.status_code] += 1

    async with httpx.AsyncClient(base_url=audits.url, timeout=20) as client:
        writers = [asyncio.create_task(write(client, worker)) for worker in range(6)]
        await asyncio.sleep(0.5)
        signalled_at = time.monotonic()
        _sigterm(audits)
        await asyncio.sleep(0.3)
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["code"] == "shutting_down"
        clean_exit = await _exited_cleanly(audits)
        stop.set()
        await asyncio.gather(*writers)

    assert clean_exit
    assert set(answered) == {201}, answered
    assert refused_at, "the service never stopped listening"
    assert min(refused_at) - signalled_at >= DRAIN_S - 0.1
