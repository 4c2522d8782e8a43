"""docker-compose.yml on the engine run.sh started: the compose command, containers, images.

The stack is the operator's file with tests/containers/compose.test.yml on top (hermetic
environment, gateway published on 127.0.0.1 only); `keyed()` adds compose.keyed.yml (the
llm service with a key, against an OpenAI stand-in container).
"""

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# The long-running services, by compose name, with the image each runs.
SERVICES = {
    "audits": "audits-platform/audits-service",
    "llm": "audits-platform/llm-service",
    "gateway": "audits-platform/gateway",
}
ONE_SHOTS = ("migrations", "audits-role")
COMPOSE_TIMEOUT_S = 900


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stdout}{result.stderr}")
    return result.stdout


def inspect(container: str) -> dict[str, Any]:
    (details,) = json.loads(docker("inspect", container))
    assert isinstance(details, dict)
    return details


def seconds(duration: str) -> float:
    """A compose duration such as `75s` or `1m30s`."""
    total, number = 0.0, ""
    for char in duration:
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number) * {"s": 1, "m": 60, "h": 3600}[char]
            number = ""
    return total


@dataclass
class Stack:
    gateway_port: int
    openai_key: str
    files: list[Path] = field(
        default_factory=lambda: [REPO / "docker-compose.yml", HERE / "compose.test.yml"]
    )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def image_tag(self) -> str:
        env = dict(
            line.split("=", 1)
            for line in (HERE / "compose.env").read_text().splitlines()
            if line and not line.startswith("#")
        )
        return env["IMAGE_TAG"]

    def image(self, service: str) -> str:
        return f"{SERVICES[service]}:{self.image_tag}"

    def compose(self, *args: str, timeout: float = COMPOSE_TIMEOUT_S) -> str:
        command = ["docker", "compose", "--env-file", str(HERE / "compose.env")]
        for file in self.files:
            command += ["-f", str(file)]
        env = {
            **os.environ,
            "GATEWAY_PORT": str(self.gateway_port),
            "TEST_OPENAI_API_KEY": self.openai_key,
        }
        result = subprocess.run(
            [*command, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def keyed(self) -> None:
        self.files.append(HERE / "compose.keyed.yml")

    def config(self) -> dict[str, Any]:
        document = yaml.safe_load(self.compose("config"))
        assert isinstance(document, dict)
        return document

    def container(self, service: str) -> str:
        (container,) = self.compose("ps", "--all", "--quiet", service).split()
        return container

    def containers(self) -> dict[str, dict[str, Any]]:
        """Service -> `docker inspect` of its container, one-shots included."""
        services = self.compose("config", "--services").split()
        return {service: inspect(self.container(service)) for service in services}

    def logs(self, service: str) -> list[str]:
        """Every line the service's container wrote, stdout and stderr, across restarts."""
        result = subprocess.run(
            ["docker", "logs", self.container(service)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return (result.stdout + result.stderr).splitlines()
