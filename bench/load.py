"""Load generation from separate processes: wrk when installed, else `bench.loadclient`;
the OpenAI SDK and raw asyncpg references run as their own processes too."""

import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from bench.stack import Stack

_WRK_SCRIPT = """
wrk.method = {method}
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"requests":%d,"duration_us":%d,"errors":%d,"non_2xx":%d,'
    .. '"p50_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class Target:
    """One HTTP request shape to put under load."""

    url: str
    method: str = "GET"
    body: str | None = None
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Load:
    tool: str
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int = 0
    non_2xx: int = 0
    extra: dict[str, float | None] = field(default_factory=dict)

    @property
    def failed_share(self) -> float:
        return (self.errors + self.non_2xx) / max(self.requests, 1)


def _cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        seconds[name] = times.user + times.system
    return seconds


def _lua_string(value: str) -> str:
    return "[==[" + value + "]==]"


def _with_cpu(load: Load, before: Mapping[str, float], after: Mapping[str, float]) -> Load:
    """`load` with the CPU time per request of each watched process, `cpu_<name>_us`."""
    per_request = {
        f"cpu_{name}_us": (after[name] - before[name]) / max(load.requests, 1) * 1e6
        for name in before
        if name in after
    }
    return replace(load, extra={**load.extra, **per_request})


def _from_json(tool: str, raw: dict[str, float | None]) -> Load:
    extra = {
        k: v for k, v in raw.items() if k.endswith(("_ms", "_us")) and k not in ("p50_ms", "p99_ms")
    }
    return Load(
        tool=tool,
        rps=float(raw["rps"] or 0.0),
        p50_ms=raw.get("p50_ms"),
        p99_ms=raw.get("p99_ms"),
        requests=int(raw.get("requests") or 0),
        errors=int(raw.get("errors") or 0),
        non_2xx=int(raw.get("non_2xx") or 0),
        extra=extra,
    )


def _last_json(output: str, prefix: str = "") -> dict[str, float | None]:
    for line in reversed(output.splitlines()):
        if line.startswith(prefix + "{"):
            parsed: dict[str, float | None] = json.loads(line[len(prefix) :])
            return parsed
    raise RuntimeError(f"no result in load tool output: {output[-300:]!r}")


class LoadRunner:
    """Runs the load tools; `wrk` is used when installed unless `python_only`."""

    def __init__(self, stack: Stack, python_only: bool = False) -> None:
        self.stack = stack
        self.wrk = None if python_only else shutil.which("wrk")
        self._scripts = Path(tempfile.mkdtemp(prefix="wrk-", dir=stack.workdir))

    @property
    def tool_name(self) -> str:
        return "wrk" if self.wrk else "python loadclient"

    def http(
        self,
        target: Target,
        concurrency: int,
        duration: float,
        watch: Mapping[str, int] | None = None,
    ) -> Load:
        """Puts `target` under load; `watch` names server PIDs whose CPU time per request
        is reported in `extra` as `cpu_<name>_us` (robust to a noisy neighbour)."""
        before = _cpu_seconds(watch or {})
        if self.wrk is not None:
            load = self._wrk(target, concurrency, duration)
        else:
            load = self.python_client(target, concurrency, duration)
        return _with_cpu(load, before, _cpu_seconds(watch or {}))

    def _wrk(self, target: Target, concurrency: int, duration: float) -> Load:
        assert self.wrk is not None
        headers = "\n".join(
            f"wrk.headers[ {_lua_string(name.strip())} ] = {_lua_string(value.strip())}"
            for name, _, value in (h.partition(":") for h in target.headers)
        )
        script = self._scripts / f"{abs(hash(target))}.lua"
        script.write_text(
            _WRK_SCRIPT.format(
                method=_lua_string(target.method),
                body="nil" if target.body is None else _lua_string(target.body),
                headers=headers,
            )
        )
        seconds = max(1, round(duration))
        output = self.stack.tool(
            [
                self.wrk,
                "-t1",
                f"-c{concurrency}",
                f"-d{seconds}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                target.url,
            ],
            timeout=seconds + 60,
        )
        raw = _last_json(output, "BENCHJSON ")
        elapsed = float(raw["duration_us"] or 1) / 1e6
        return Load(
            tool="wrk",
            rps=float(raw["requests"] or 0) / elapsed,
            p50_ms=float(raw["p50_us"] or 0) / 1000,
            p99_ms=float(raw["p99_us"] or 0) / 1000,
            requests=int(raw["requests"] or 0),
            errors=int(raw["errors"] or 0),
            non_2xx=int(raw["non_2xx"] or 0),
        )

    def python_client(
        self, target: Target, concurrency: int, duration: float, once: bool = False
    ) -> Load:
        command = [
            sys.executable,
            "-m",
            "bench.loadclient",
            target.url,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--method",
            target.method,
        ]
        if target.body is not None:
            command += ["--body", target.body]
        for header in target.headers:
            command += ["--header", header]
        if once:
            command.append("--once")
        return _from_json("python", _last_json(self.stack.tool(command, duration + 120)))

    def module(
        self,
        module: str,
        args: Sequence[str],
        duration: float,
        watch: Mapping[str, int] | None = None,
    ) -> Load:
        """A client of ours (`bench.sdkclient`, `bench.pgclient`) as a process; `watch` as
        in `http`."""
        before = _cpu_seconds(watch or {})
        command = [sys.executable, "-m", module, *args, "--duration", str(duration)]
        load = _from_json(module, _last_json(self.stack.tool(command, duration + 120)))
        return _with_cpu(load, before, _cpu_seconds(watch or {}))


def median_load(loads: Sequence[Load]) -> Load:
    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    extra_keys = {k for load in loads for k in load.extra}
    return replace(
        loads[0],
        rps=statistics.median(load.rps for load in loads),
        p50_ms=med([load.p50_ms for load in loads]),
        p99_ms=med([load.p99_ms for load in loads]),
        requests=sum(load.requests for load in loads),
        errors=sum(load.errors for load in loads),
        non_2xx=sum(load.non_2xx for load in loads),
        extra={k: med([load.extra.get(k) for load in loads]) for k in extra_keys},
    )


def paired(
    reference: Callable[[float], Load],
    subject: Callable[[float], Load],
    runs: int,
    duration: float,
    warmup: float = 1.0,
) -> tuple[Load, Load]:
    """Medians of `runs` alternating runs of a reference and its subject (same conditions),
    after a short warm-up of each."""
    if warmup:
        reference(warmup)
        subject(warmup)
    references: list[Load] = []
    subjects: list[Load] = []
    for _ in range(runs):
        references.append(reference(duration))
        subjects.append(subject(duration))
    return median_load(references), median_load(subjects)


def repeated(
    subject: Callable[[float], Load], runs: int, duration: float, warmup: float = 1.0
) -> Load:
    if warmup:
        subject(warmup)
    return median_load([subject(duration) for _ in range(runs)])
