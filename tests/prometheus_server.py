"""A real Prometheus server for tests (the distribution's `prometheus` package), on a free
127.0.0.1 port with a generated scrape config; stopped by the test that started it."""

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from devstack.postgres import free_port


def prometheus_binary() -> str:
    """`prometheus` from PATH, installed from the distribution's package when missing."""
    found = shutil.which("prometheus")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        found = shutil.which("prometheus")
    if found is None:
        raise RuntimeError("install Prometheus (Debian/Ubuntu: apt-get install prometheus)")
    return found


class Prometheus:
    """`with Prometheus(workdir, {"gateway": "127.0.0.1:9100", ...}) as prometheus:` scraping
    each job's target every second."""

    def __init__(self, workdir: Path, targets: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Prometheus":
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.workdir / "prometheus.log").read_text()
                raise RuntimeError(f"prometheus exited: {log[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {timeout} s")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector; a PromQL error fails the test."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert response.status_code == 200, (promql, body)
        assert body["status"] == "success", (promql, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def by(self, promql: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The query's samples keyed by the values of `labels`."""
        return {
            tuple(sample["metric"].get(label, "") for label in labels): float(sample["value"][1])
            for sample in self.query(promql)
        }

    def scalar(self, promql: str) -> float:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else 0.0

    def metric_names(self) -> set[str]:
        response = httpx.get(f"{self.url}/api/v1/label/__name__/values", timeout=10)
        return set(response.json()["data"])

    def wait_for_scrapes(self, jobs: str = "gateway|audits|llm", timeout: float = 30.0) -> None:
        """Until each of `jobs` has been scraped again: each is scraped on its own schedule,
        so one job's fresh numbers say nothing of another's."""
        since = time.time()
        query = f'min(timestamp(up{{job=~"{jobs}"}}))'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.scalar(query) > since:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{jobs} not all scraped within {timeout} s")

    def wait_until(self, promql: str, expected: float, timeout: float = 30.0) -> None:
        """Until `promql` (a scalar-like query) is `expected`: the last scrape is recent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.scalar(promql) == expected:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{promql} is {self.scalar(promql)}, not {expected}")
