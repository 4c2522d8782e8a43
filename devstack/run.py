"""`make run`: the whole stack on this machine, no Docker.

PostgreSQL from the embedded wheel in `.data/postgres` (unless DATABASE_URL is set),
migrations and the audits service's login role, then audits (logged in as that role, not as
the tables' owner), llm and gateway under uvicorn, all logging to stdout. Ctrl-C or
SIGTERM stops everything this process started, the database included.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import FrameType

from loguru import logger
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from devstack.postgres import EmbeddedPostgres
from devstack.processes import ServiceProcess, repo_root
from servicekit import configure_logging

READY_TIMEOUT_S = 60.0
SERVICE_LOGIN = "audits_service"


class RunSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    gateway_port: int = 8000
    audits_port: int = 8001
    llm_port: int = 8002
    database_url: str | None = None
    # The audits service's login role (a member of the migrations' `audits_app` group).
    audits_db_user: str = SERVICE_LOGIN
    audits_db_password: str | None = None
    log_level: str = "INFO"


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM is handled like Ctrl-C so that one path stops everything we started; a second
    # signal (uv forwards the one the whole process group got) must not cut that path short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def migrate(database_url: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(repo_root() / "migrations/alembic.ini"),
            "upgrade",
            "head",
        ],
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
    )


def provision_service_role(
    database_url: str, login: str = SERVICE_LOGIN, password: str | None = None
) -> str:
    """Create or update the audits login role as the operator does (`python -m
    audits_service.roles`, connected as the owner); returns the URL the service logs in with:
    `database_url` with the login role's credentials."""
    env = {**os.environ, "DATABASE_URL": database_url, "AUDITS_DB_USER": login}
    if password is not None:
        env["AUDITS_DB_PASSWORD"] = password
    command = [sys.executable, "-m", "audits_service.roles"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"python -m audits_service.roles failed: {done.stderr[-500:]}")
    url = make_url(database_url).set(username=login, password=password)
    return url.render_as_string(hide_password=False)


def wait_ready(url: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as error:
            status = error.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    return status


def main() -> int:
    settings = RunSettings()
    configure_logging("devstack", settings.log_level)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    database: EmbeddedPostgres | None = None
    services: list[ServiceProcess] = []
    try:
        database_url = settings.database_url
        audits = ServiceProcess("audits", {}, settings.audits_port)
        llm = ServiceProcess("llm", {}, settings.llm_port)
        gateway = ServiceProcess(
            "gateway",
            # Like the services' own ports, the gateway's metrics stay on this machine.
            {
                "AUDITS_SERVICE_URL": audits.url,
                "LLM_SERVICE_URL": llm.url,
                "METRICS_HOST": "127.0.0.1",
            },
            settings.gateway_port,
        )
        # llm and the gateway need no database: they start while it starts and migrates.
        services = [llm, gateway]
        for service in services:
            service.start(wait=False)
        if database_url is None:
            database = EmbeddedPostgres(repo_root() / ".data" / "postgres")
            database.start()
            database_url = database.url
            logger.info("embedded PostgreSQL ready", port=database.port, data=".data/postgres")
        migrate(database_url)
        audits.env["DATABASE_URL"] = provision_service_role(
            database_url, settings.audits_db_user, settings.audits_db_password
        )
        logger.info("audits login role ready", role=settings.audits_db_user)
        services.insert(0, audits.start(wait=False))
        for service in services:
            service.wait_live()
        status = wait_ready(f"{gateway.url}/health/ready", READY_TIMEOUT_S)
        logger.info(
            "stack ready",
            gateway=gateway.url,
            docs=f"{gateway.url}/docs",
            readiness_status=status,
        )
        while all(s.process is not None and s.process.poll() is None for s in services):
            time.sleep(0.5)
        logger.error("a service exited on its own; stopping the stack")
        return 1
    except KeyboardInterrupt as stop:
        logger.info("stopping the stack", signal=str(stop))
        return 0
    finally:
        for service in reversed(services):
            service.stop()
        if database is not None:
            database.stop()
        logger.info("stack stopped")


if __name__ == "__main__":
    sys.exit(main())
