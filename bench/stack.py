"""Everything the benchmark starts: PostgreSQL, the services, the stand-ins, the load tools.

Every process is registered here when started and stopped by its PID in `close()`, which
runs on normal exit, on errors and on Ctrl-C/SIGTERM alike.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from devstack.postgres import EmbeddedPostgres, free_port
from devstack.processes import ServiceProcess, repo_root, uvicorn_command
from devstack.run import provision_service_role


class Skip(Exception):
    """A row that cannot run here, with the reason shown in the table."""


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def http_send(
    url: str, method: str, body: bytes | None, headers: Mapping[str, str], timeout: float = 10.0
) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = repo_root()
        self._children: list[subprocess.Popen[bytes]] = []
        self._services: dict[str, ServiceProcess] = {}
        self._postgres: EmbeddedPostgres | None = None
        self._databases: dict[str, str] = {}
        self._logins: dict[str, str] = {}
        self._urls: dict[str, str] = {}
        self._servers: dict[str, int] = {}

    # -- processes -----------------------------------------------------------------------

    def log(self, name: str) -> IO[bytes]:
        return (self.workdir / f"{name}.log").open("ab")

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])

    def spawn(
        self,
        command: Sequence[str],
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = self.log(name)
        process = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(self.root), **(env or {})},
            cwd=cwd or self.workdir,
        )
        log.close()
        self._children.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self._children:
            self._children.remove(process)

    def start_tool(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """Starts a load generator whose stdout is read by `finish_tool`."""
        process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(self.root)},
            cwd=self.workdir,
        )
        self._children.append(process)
        return process

    def finish_tool(self, process: subprocess.Popen[bytes], timeout: float) -> str:
        try:
            out, err = process.communicate(timeout=timeout)
        finally:
            self.stop(process, signal.SIGKILL)
        if process.returncode != 0:
            name = Path(str(process.args[0])).name if isinstance(process.args, list) else "tool"
            raise RuntimeError(f"{name} failed: {err.decode(errors='replace')[-300:]}")
        return out.decode()

    def tool(self, command: Sequence[str], timeout: float) -> str:
        """Runs a load generator to completion (bounded) and returns its stdout."""
        return self.finish_tool(self.start_tool(command), timeout)

    def server(self, name: str, command: Sequence[str], port: int, probe: str = "/") -> str:
        """A server process of ours listening on `port`; started once, returns its URL."""
        if name not in self._urls:
            process = self.spawn(command, name)
            url = f"http://127.0.0.1:{port}"
            wait_http(url + probe, process, name, self)
            self._urls[name] = url
            self._servers[name] = process.pid
        return self._urls[name]

    def python_app(self, name: str, app: str) -> str:
        """A uvicorn app factory of ours (the trivial upstream) on a free port."""
        port = free_port()
        return self.server(name, uvicorn_command(app, port), port, "/health")

    # -- services ------------------------------------------------------------------------

    def service(self, key: str, name: str, env: Mapping[str, str]) -> ServiceProcess:
        """Starts (once per key) one of our services, one uvicorn worker, logging to a file."""
        if key in self._services:
            return self._services[key]
        with self.log(key) as log:
            # A gateway's metrics listener on a free port: several run at once.
            settings = {"LOG_LEVEL": "INFO", "METRICS_PORT": "0", **env}
            service = ServiceProcess(name, settings, log=log)
            try:
                service.start(timeout=60)
            except (RuntimeError, TimeoutError) as error:
                service.kill()
                tail = self.log_tail(key)
                raise RuntimeError(f"{name} did not start ({error}): {tail}") from None
        assert service.process is not None
        self._services[key] = service
        return service

    def pid(self, key: str) -> int:
        """The PID of a service (by its key) or of one of our servers (by its name)."""
        if key in self._servers:
            return self._servers[key]
        process = self._services[key].process
        assert process is not None
        return process.pid

    def stop_service(self, key: str) -> None:
        service = self._services.pop(key, None)
        if service is not None:
            service.stop()

    def postgres(self) -> EmbeddedPostgres:
        if self._postgres is None:
            server = EmbeddedPostgres(self.workdir / "postgres")
            self._postgres = server
            server.start()
        return self._postgres

    def database(self, name: str) -> str:
        """A migrated database (`alembic upgrade head`) on the bench's PostgreSQL."""
        if name in self._databases:
            return self._databases[name]
        alembic_ini = self.root / "migrations" / "alembic.ini"
        url = self.postgres().create_database(name)
        migrate = subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(alembic_ini), "upgrade", "head"],
            env={**os.environ, "DATABASE_URL": url},
            capture_output=True,
            check=False,
            timeout=120,
        )
        if migrate.returncode != 0:
            tail = migrate.stderr.decode(errors="replace")[-300:]
            raise RuntimeError(f"alembic upgrade head failed: {tail}")
        self._databases[name] = url
        return url

    def service_database(self, name: str) -> str:
        """`database(name)` as the audits service logs in to it, like `make run`: with its
        own login role (a member of `audits_app`), never as the tables' owner."""
        if name not in self._logins:
            self._logins[name] = provision_service_role(self.database(name))
        return self._logins[name]

    def close(self) -> None:
        for key in reversed(list(self._services)):
            self.stop_service(key)
        for process in reversed(list(self._children)):
            self.stop(process)
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None


def wait_http(
    url: str,
    process: subprocess.Popen[bytes],
    name: str,
    stack: Stack,
    timeout: float = 30,
    interval: float = 0.05,
    status: int | None = None,
) -> None:
    """Polls `url` until it answers (with `status`, if given) while `process` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {stack.log_tail(name)}")
        try:
            answered = http_get(url, timeout=1)[0]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            answered = None
        if answered is not None and (status is None or answered == status):
            return
        time.sleep(interval)
    raise TimeoutError(f"{name} did not answer {url} within {timeout:g} s: {stack.log_tail(name)}")
