"""Service processes under uvicorn, started and stopped by PID, for `make run`, tests and bench."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from devstack.postgres import free_port

# uvicorn's httptools protocol with a response's writes of one event-loop pass sent as one
# (servicekit.server); the gateway, the public edge, adds its connection limits to it.
HTTP_PROTOCOLS = {
    "gateway": "gateway.server:EdgeHttpProtocol",
    "audits": "servicekit.server:HttpProtocol",
    "llm": "servicekit.server:HttpProtocol",
}
# The gateway applies TRUSTED_PROXIES to X-Forwarded-For itself; uvicorn's own proxy-header
# handling (on by default, trusting 127.0.0.1) would let any local client pick its address.
OWN_PROXY_HEADERS = frozenset({"gateway"})

APPS = {
    "audits": "audits_service.main:create_app",
    "llm": "llm_service.main:create_app",
    "gateway": "gateway.main:create_app",
}


def uvicorn_command(
    app: str, port: int, *, own_proxy_headers: bool = False, http: str = "httptools"
) -> list[str]:
    """How every app of ours is served: an app factory, one worker, uvloop and httptools
    (or `http`, a protocol class built on it)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        http,
        "--no-access-log",
        *(("--no-proxy-headers",) if own_proxy_headers else ()),
        "--timeout-graceful-shutdown",
        "10",
    ]


class ServiceProcess:
    """One service under uvicorn on 127.0.0.1, with its own environment."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        port: int | None = None,
        log: IO[bytes] | int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.env = {**os.environ, **env}
        self.log = log
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 30.0) -> "ServiceProcess":
        command = uvicorn_command(
            APPS[self.name],
            self.port,
            own_proxy_headers=self.name in OWN_PROXY_HEADERS,
            http=HTTP_PROTOCOLS[self.name],
        )
        self.process = subprocess.Popen(
            [*command, *self.extra_args],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT if self.log is not None else None,
        )
        if wait:
            self.wait_live(timeout)
        return self

    def wait_live(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):  # noqa: S310
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} not live after {timeout} s")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
