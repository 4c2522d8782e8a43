"""What an operator relies on, checked on a real Docker engine (`make test-containers`).

The images are built from the repository's Dockerfiles and docker-compose.yml runs as an
operator runs it (see compose_stack.py for the test's overrides). The checks run in this
file's order on one stack: first without an OpenAI key, then with one (against the stand-in).
"""

import itertools
import json
import re
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from devstack.postgres import free_port
from tests.containers.compose_stack import ONE_SHOTS, SERVICES, Stack, docker, inspect, seconds

# uvicorn re-raises the SIGTERM it handled; tini (`init: true`) exits 128 + 15 for it.
CLEAN_STOP_EXIT_CODES = {0, 143}
IMAGE_SIZE_LIMIT_MB = 400
# Key material, not the header strings that TLS libraries carry.
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]{64}")
# What the Dockerfiles add to the base image (whose system libraries may embed self-test keys).
OWN_LAYERS = ("opt/venv/", "app/")
# Our packages and the image's own directories: no tests of ours may be there.
OWN_DIRECTORIES = ("servicekit", "gateway", "audits_service", "llm_service", "app", "src")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The stack run.sh built the images of, up until every service is healthy."""
    stack = Stack(gateway_port=free_port(), openai_key=f"sk-container-{secrets.token_hex(8)}")
    try:
        stack.compose("up", "--detach", "--wait")
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def keyed(stack: Stack) -> Stack:
    """The stack from here on: the llm service with a key, against the OpenAI stand-in."""
    stack.keyed()
    stack.compose("up", "--detach", "--wait")
    return stack


def started_at(container: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(container["State"]["StartedAt"][:26] + "+00:00")


def finished_at(container: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(container["State"]["FinishedAt"][:26] + "+00:00")


def test_every_service_is_healthy(stack: Stack) -> None:
    containers = stack.containers()
    for service in ["postgres", *SERVICES]:
        state = containers[service]["State"]
        assert state["Running"], f"{service}: {state}"
        assert state["Health"]["Status"] == "healthy", f"{service}: {state['Health']}"
    for service in ONE_SHOTS:
        state = containers[service]["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), f"{service}: {state}"


def test_only_the_gateway_publishes_a_port_on_this_machine_only(stack: Stack) -> None:
    published = {
        service: {
            port: bindings
            for port, bindings in details["NetworkSettings"]["Ports"].items()
            if bindings
        }
        for service, details in stack.containers().items()
        if details["State"]["Running"]
    }
    assert published.pop("gateway") == {
        "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(stack.gateway_port)}]
    }
    assert not any(published.values()), published


def test_services_run_as_non_root_on_a_read_only_root_filesystem(stack: Stack) -> None:
    containers = stack.containers()
    for service in [*SERVICES, *ONE_SHOTS]:
        assert containers[service]["HostConfig"]["ReadonlyRootfs"] is True, service
        assert containers[service]["Config"]["User"] == "10001:10001", service
    probe = (
        "import os\n"
        "try:\n    open('/opt/venv/probe', 'w')\nexcept OSError as error:\n    print(error.errno)\n"
        "print(os.getuid(), os.getgid())"
    )
    for service in SERVICES:
        out = docker("exec", stack.container(service), "python", "-c", probe).split("\n")
        # 30 is EROFS: the root filesystem itself refuses, whatever the file's permissions.
        assert out[:2] == ["30", "10001 10001"], f"{service}: {out}"


def test_migrations_and_the_role_ran_as_one_shots_before_audits_started(stack: Stack) -> None:
    containers = stack.containers()
    migrations, role, audits = (containers[s] for s in ["migrations", "audits-role", "audits"])
    assert migrations["Config"]["Cmd"][:3] == ["alembic", "-c", "migrations/alembic.ini"]
    assert role["Config"]["Cmd"] == ["python", "-m", "audits_service.roles"]
    for one_shot in (migrations, role):
        assert one_shot["State"]["ExitCode"] == 0
        assert one_shot["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert finished_at(migrations) <= started_at(role)
    assert finished_at(role) <= started_at(audits)
    # The service connects as its own login role, not as the tables' owner.
    assert "DATABASE_URL=postgresql+asyncpg://audits_service:" in "\n".join(audits["Config"]["Env"])


def test_an_audit_record_round_trips_through_the_gateway(client: httpx.Client) -> None:
    record = {"action": "create", "actor": "container-test", "resource_type": "image"}
    created = client.post("/api/v1/audits", json=record)
    assert created.status_code == 201, created.text
    body = created.json()
    read = client.get(f"/api/v1/audits/{body['id']}")
    assert read.status_code == 200, read.text
    assert read.json() == body
    listed = client.get("/api/v1/audits", params={"actor": "container-test"})
    assert listed.status_code == 200, listed.text
    assert body["id"] in [item["id"] for item in listed.json()["items"]]


def test_llm_without_a_key_is_503_llm_not_configured(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": "hello"}]
    response = client.post("/api/v1/openai/chat", json={"messages": messages})
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "llm_not_configured"


def test_merged_openapi_and_docs_are_served(client: httpx.Client) -> None:
    openapi = client.get("/openapi.json")
    assert openapi.status_code == 200
    paths = openapi.json()["paths"]
    assert "/api/v1/audits" in paths
    assert "/api/v1/openai/v1/chat/completions" in paths
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_llm_with_a_key_answers_a_chat_completion_and_a_stream(
    keyed: Stack, client: httpx.Client
) -> None:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    completion = client.post("/api/v1/openai/v1/chat/completions", json=request)
    assert completion.status_code == 200, completion.text
    assert completion.json()["object"] == "chat.completion"
    assert completion.json()["choices"][0]["message"]["content"]
    with client.stream(
        "POST", "/api/v1/openai/v1/chat/completions", json={**request, "stream": True}
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_data_survives_down_and_up(keyed: Stack, client: httpx.Client) -> None:
    record = {"action": "create", "actor": "survivor", "resource_type": "volume"}
    created = client.post("/api/v1/audits", json=record)
    assert created.status_code == 201, created.text
    keyed.compose("down", "--timeout", "30")
    assert not keyed.compose("ps", "--all", "--quiet").split()
    keyed.compose("up", "--detach", "--wait")
    read = client.get(f"/api/v1/audits/{created.json()['id']}")
    assert read.status_code == 200, read.text
    assert read.json() == created.json()


# A request the service has started on (headers and part of the body) when SIGTERM arrives;
# the client sends the rest a while later and prints the status line it gets back.
_SLOW_CLIENT = """
import socket, sys, time
host, port, path, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode()
head = (f"POST {path} HTTP/1.1\\r\\nHost: {host}\\r\\nContent-Type: application/json\\r\\n"
        f"Content-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n").encode()
with socket.create_connection((host, port), timeout=60) as sock:
    sock.sendall(head + body[:8])
    print("started", flush=True)
    time.sleep(float(sys.argv[5]))
    sock.sendall(body[8:])
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
print(answer.split(b"\\r\\n", 1)[0].decode(), flush=True)
"""
_IN_FLIGHT_S = 3.0
# Service -> the request kept in flight (path, JSON body), sent to it directly.
_IN_FLIGHT = {
    "audits": (
        "/api/v1/audits",
        {"action": "create", "actor": "in-flight", "resource_type": "sigterm"},
    ),
    "llm": (
        "/api/v1/openai/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "in flight"}]},
    ),
    "gateway": (
        "/api/v1/audits",
        {"action": "create", "actor": "in-flight", "resource_type": "sigterm"},
    ),
}


def slow_client(keyed: Stack, service: str) -> subprocess.Popen[str]:
    """From the host to the gateway's published port; to the others from inside the gateway's
    container, on the compose network only it shares with them."""
    path, body = _IN_FLIGHT[service]
    args = [path, json.dumps(body), str(_IN_FLIGHT_S)]
    if service == "gateway":
        argv = [sys.executable, "-c", _SLOW_CLIENT, "127.0.0.1", str(keyed.gateway_port), *args]
    else:
        port = {"audits": "8001", "llm": "8002"}[service]
        gateway = keyed.container("gateway")
        argv = ["docker", "exec", gateway, "python", "-c", _SLOW_CLIENT, service, port, *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("service", list(SERVICES))
def test_sigterm_stops_the_service_within_its_grace_finishing_in_flight_requests(
    keyed: Stack, service: str
) -> None:
    grace = seconds(keyed.config()["services"][service]["stop_grace_period"])
    container = keyed.container(service)
    client = slow_client(keyed, service)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "started", client.communicate()
        started = time.monotonic()
        # docker stop: the image's stop signal (SIGTERM), SIGKILL only after the grace.
        docker("stop", "--time", str(int(grace)), container, timeout=grace + 30)
        stopped_after = time.monotonic() - started
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
    state = inspect(container)["State"]
    assert state["ExitCode"] in CLEAN_STOP_EXIT_CODES, state
    assert stopped_after < grace
    assert out.strip().split(" ", 2)[1] in {"200", "201"}, out + err
    assert "Application shutdown complete." in "\n".join(keyed.logs(service))
    keyed.compose("up", "--detach", "--wait")


def test_every_log_line_of_every_service_is_json(keyed: Stack) -> None:
    for service in [*SERVICES, *ONE_SHOTS]:
        lines = keyed.logs(service)
        assert lines, service
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"{service} wrote a line that is not JSON: {line!r}")
            assert isinstance(entry, dict), line
            assert {"time", "level", "message", "service"} <= set(entry), line


def image_files(image: str) -> Iterator[tuple[str, bytes | None]]:
    """Each path of the image's filesystem with a regular file's content (`docker export` of
    a container never started)."""
    container = docker("create", image).strip()
    try:
        with subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE) as export:
            assert export.stdout is not None
            with tarfile.open(fileobj=export.stdout, mode="r|") as archive:
                for member in archive:
                    handle = archive.extractfile(member) if member.isfile() else None
                    yield member.name, handle.read() if handle else None
        assert export.returncode == 0
    finally:
        docker("rm", container)


@pytest.mark.parametrize("service", list(SERVICES))
def test_the_image_holds_no_tests_git_env_or_secrets(keyed: Stack, service: str) -> None:
    image = keyed.image(service)
    found: list[str] = []
    key = keyed.openai_key.encode()
    for name, content in image_files(image):
        parts = name.split("/")
        if ".git" in parts or parts[-1] == ".env" or parts[-1].startswith(".env."):
            found.append(name)
        if any(a in OWN_DIRECTORIES and b == "tests" for a, b in itertools.pairwise(parts)):
            found.append(name)
        ours = name.startswith(OWN_LAYERS)
        if ours and content and (PRIVATE_KEY.search(content) or key in content):
            found.append(f"{name} (a secret)")
    assert not found, found
    environment = "\n".join(inspect(image)["Config"]["Env"])
    assert "OPENAI_API_KEY" not in environment
    assert "PASSWORD" not in environment
    assert "DATABASE_URL" not in environment


def test_image_sizes(keyed: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    sizes = {
        service: int(docker("image", "inspect", "--format", "{{.Size}}", keyed.image(service)))
        / 1e6
        for service in SERVICES
    }
    with capsys.disabled():
        for service, size in sizes.items():
            print(f"\n  image {keyed.image(service)}: {size:.0f} MB", end="")
        print()
    assert all(size < IMAGE_SIZE_LIMIT_MB for size in sizes.values()), sizes
