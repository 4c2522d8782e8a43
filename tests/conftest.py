"""End-to-end fixtures: the services as real uvicorn processes, the OpenAI stand-in, Redis.

The session `stack` (PostgreSQL database, audits, llm on the stand-in, gateway) is shared
by tests that only read or add data; tests that break things (kill a service, stop a
database) start their own processes with `start_service`.
"""

import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from devstack.openai_standin import OpenAIStandin
from devstack.postgres import EmbeddedPostgres, free_port
from devstack.processes import ServiceProcess
from devstack.run import migrate, provision_service_role
from testkit.debian import ensure_command
from tests.e2e_stack import (
    STACK_CLIENT_BODY_TIMEOUT_S,
    STANDIN_API_KEY,
    Stack,
    StartService,
    gateway_env,
    llm_env,
    start_logged,
    wait_ready,
)


@pytest.fixture(scope="session")
def standin() -> Iterator[OpenAIStandin]:
    """The session's OpenAI stand-in; tests that script faults use their own instance."""
    with OpenAIStandin(api_key=STANDIN_API_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def stack(
    postgres: EmbeddedPostgres,
    standin: OpenAIStandin,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack-logs")
    database_url = postgres.create_database("e2e_stack")
    migrate(database_url)
    service_url = provision_service_role(database_url)
    started: list[ServiceProcess] = []
    try:
        audits = start_logged("audits", {"DATABASE_URL": service_url}, logs / "audits.log")
        started.append(audits)
        llm = start_logged("llm", llm_env(standin), logs / "llm.log")
        started.append(llm)
        gateway_settings = gateway_env(
            audits.url, llm.url, CLIENT_BODY_TIMEOUT=str(STACK_CLIENT_BODY_TIMEOUT_S)
        )
        gateway = start_logged("gateway", gateway_settings, logs / "gateway.log")
        started.append(gateway)
        wait_ready(gateway.url)
        yield Stack(database_url, service_url, audits, llm, gateway, logs)
    finally:
        for service in reversed(started):
            service.stop()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """Start a service process for this test only; all are stopped when it ends."""
    started: list[ServiceProcess] = []

    def start(name: str, env: Mapping[str, str], port: int | None = None) -> ServiceProcess:
        service = start_logged(name, env, tmp_path / f"{name}-{len(started)}.log", port)
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.stop()


@pytest.fixture
def service_database_url(fresh_database_url: str) -> str:
    """A fresh migrated database, as the audits service logs in to it: with its own login
    role (a member of `audits_app`), never as the tables' owner, like `make run`."""
    migrate(fresh_database_url)
    return provision_service_role(fresh_database_url)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port (never the machine's own on 6379)."""
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        yield given
        return
    binary = ensure_command("redis-server", "redis-server")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_redis(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def _wait_redis(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"redis-server on port {port} not up after {timeout} s")
