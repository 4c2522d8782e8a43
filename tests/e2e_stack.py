"""The stack of real processes the end-to-end tests drive, and the settings they share."""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack.openai_standin import OpenAIStandin
from devstack.processes import ServiceProcess

STANDIN_API_KEY = "sk-standin-e2e"
# Short, so that the slow-body tests are quick; fuzzing sends every body at once.
STACK_CLIENT_BODY_TIMEOUT_S = 2.0


@dataclass
class Stack:
    # The owner's (migrations, tests' own SQL) and the audits service's login role's.
    database_url: str
    service_url: str
    audits: ServiceProcess
    llm: ServiceProcess
    gateway: ServiceProcess
    logs: Path

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


StartService = Callable[..., ServiceProcess]


def llm_env(standin: OpenAIStandin) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": STANDIN_API_KEY,
        "OPENAI_BASE_URL": standin.base_url,
        "OPENAI_MODEL": "gpt-4o-mini",
        "OPENAI_ALLOWED_MODELS": "gpt-4o-mini,gpt-4o,text-embedding-3-small",
        "OPENAI_RETRY_MAX_TIME": "5",
    }


def gateway_env(audits_url: str, llm_url: str, **extra: str) -> dict[str, str]:
    return {
        "AUDITS_SERVICE_URL": audits_url,
        "LLM_SERVICE_URL": llm_url,
        "RATE_LIMIT_LLM_PER_MINUTE": "0",
        **extra,
    }


def start_logged(
    name: str, env: Mapping[str, str], log_path: Path, port: int | None = None
) -> ServiceProcess:
    log = log_path.open("ab")
    # Tests must not depend on the runner's log level.
    service = ServiceProcess(name, {"LOG_LEVEL": "INFO", **env}, port=port, log=log)
    try:
        service.start()
    finally:
        log.close()
    return service


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s")
