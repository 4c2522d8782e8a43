"""The benchmark rows: each measures one hot path next to its physical limit in the same run
and judges it against the targets of issue 6."""

import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import psutil

from bench.load import Load, LoadRunner, Target, paired, repeated
from bench.report import Row, ms, pair_ms, rate
from bench.stack import Skip, Stack, http_get, http_send, module_exists
from bench.upstream import SLOW_STREAM_PATH
from devstack.postgres import free_port

MODEL = "gpt-4o-mini"
JSON_HEADER = ("Content-Type: application/json",)
AUDIT_BODY = {
    "action": "create",
    "actor": "bench-user",
    "resource_type": "document",
    "resource_id": "doc-42",
    "description": "benchmark write",
    "metadata": {"source": "bench", "n": 1},
    "ip_address": "127.0.0.1",
    "user_agent": "bench/1.0",
}
CHAT_BODY = {"messages": [{"role": "user", "content": "Say hello."}]}
MILLION = 1_000_000
DEEP = 500_000


@dataclass(frozen=True)
class Settings:
    runs: int
    duration: float
    warmup: float
    concurrency: int = 32


def failures(load: Load) -> str:
    if load.failed_share <= 0.01:
        return ""
    return f"{load.errors} errors and {load.non_2xx} non-2xx of {load.requests} requests"


def join(*notes: str) -> str:
    return "; ".join(note for note in notes if note)


def cpu_note(load: Load, prefix: str = "CPU/request: ", **names: str) -> str:
    """`CPU/request: gateway 240 µs, …` from the run's `cpu_<process>_us` figures."""
    parts = [
        f"{label} {value:.0f} µs"
        for label, key in names.items()
        if (value := load.extra.get(f"cpu_{key}_us")) is not None
    ]
    return prefix + ", ".join(parts) if parts else ""


def judge(ok: bool, *loads: Load) -> tuple[str, str]:
    notes = [failure for failure in map(failures, loads) if failure]
    return ("PASS" if ok and not notes else "FAIL"), "; ".join(notes)


def expect(status: int, body: bytes, wanted: int, what: str) -> None:
    if status != wanted:
        snippet = body[:160].decode(errors="replace")
        raise Skip(f"{what} answered {status}, not {wanted} (not there yet?): {snippet}")


def run_sql(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(url)
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    return asyncio.run(fetch())


async def _bulk_insert(url: str, table: str, names: str, values: str) -> None:
    """One `INSERT … SELECT generate_series`, with the secondary indexes built afterwards
    (a sorted build is many times faster than a million random index insertions)."""
    connection = await asyncpg.connect(url)
    try:
        indexes = await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1 "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)",
            table,
        )
        for index in indexes:
            await connection.execute(f'DROP INDEX "{index["indexname"]}"')
        await connection.execute(
            f'INSERT INTO "{table}" ({names}) SELECT {values} '  # noqa: S608
            f"FROM generate_series(1, {MILLION}) AS g"
        )
        await connection.execute("SET maintenance_work_mem = '256MB'")
        for index in indexes:
            await connection.execute(index["indexdef"])
        await connection.execute(f'VACUUM ANALYZE "{table}"')
    finally:
        await connection.close()


class Bench:
    """The fixtures the rows share, each started on first use and stopped by the stack."""

    def __init__(self, stack: Stack, runner: LoadRunner, settings: Settings) -> None:
        self.stack = stack
        self.runner = runner
        self.settings = settings
        self._cache: dict[str, Any] = {}

    def once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # -- fixtures ------------------------------------------------------------------------

    def upstream(self) -> str:
        return self.stack.python_app("upstream", "bench.upstream:create_app")

    def gateway_to_upstream(self, key: str = "gateway-upstream") -> str:
        upstream = self.upstream()
        env = {
            "AUDITS_SERVICE_URL": upstream,
            "LLM_SERVICE_URL": upstream,
            "RATE_LIMIT_LLM_PER_MINUTE": "0",
        }
        return self.stack.service(key, "gateway", env).url

    def audits(self, key: str = "audits", database: str = "bench") -> str:
        url = self.stack.database(database)
        return self.stack.service(key, "audits", {"DATABASE_URL": url}).url

    def standin(self) -> str:
        if not module_exists("devstack.openai_standin"):
            raise Skip("devstack/openai_standin.py does not exist yet")
        port = free_port()
        command = [sys.executable, "-m", "devstack.openai_standin", "--port", str(port)]
        return self.stack.server("openai-standin", command, port, "/v1/models")

    def llm(self, key: str = "llm") -> str:
        env = {
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": self.standin() + "/v1",
            "OPENAI_MODEL": MODEL,
        }
        return self.stack.service(key, "llm", env).url

    def gateway_real(self, key: str = "gateway") -> str:
        """The gateway in front of the real audits and llm services (whichever exist)."""

        def build() -> str:
            dead = f"http://127.0.0.1:{free_port()}"
            try:
                audits = self.audits()
            except Skip:
                audits = dead
            try:
                llm = self.llm()
            except Skip:
                llm = dead
            env = {
                "AUDITS_SERVICE_URL": audits,
                "LLM_SERVICE_URL": llm,
                "RATE_LIMIT_LLM_PER_MINUTE": "0",
            }
            return self.stack.service(key, "gateway", env).url

        url: str = self.once(key, build)
        return url

    def audit_table(self, database_url: str) -> str:
        rows = run_sql(
            database_url,
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND column_name IN ('actor', 'resource_type') GROUP BY table_name "
            "HAVING count(*) = 2",
        )
        if not rows:
            raise Skip("no audit table with actor and resource_type columns after migrations")
        name: str = rows[0]["table_name"]
        return name

    def audit_values(self, database_url: str, table: str, generated: bool) -> tuple[str, str]:
        """Column list and SQL values for one audit row, from the table's real columns.

        `generated` builds `INSERT … SELECT` expressions over `g` (generate_series), else a
        single row whose id and request ID are the statement's `$1`.
        """
        columns = run_sql(
            database_url,
            "SELECT column_name, udt_name, column_default, is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 "
            "ORDER BY ordinal_position",
            table,
        )
        actions = "ARRAY['create','read','update','delete','login','logout','access','export',"
        actions += "'import','execute']"
        single = {
            "id": "$1::uuid",
            "action": "'create'",
            "status": "'success'",
            "actor": "'bench-user'",
            "resource_type": "'document'",
            "resource_id": "'doc-42'",
            "description": "'benchmark write'",
            "metadata": '\'{"source": "bench", "n": 1}\'',
            "ip_address": "'127.0.0.1'",
            "user_agent": "'bench/1.0'",
            "request_id": "$1::text",
        }
        series = {
            # Ascending like the service's time-ordered ids: appends to the primary key
            # index instead of a million random insertions (3 s instead of 11 s).
            "id": "'01900000-0000-7000-8000-' || lpad(to_hex(g), 12, '0')",
            "action": f"({actions})[1 + g % 10]",
            "status": "'success'",
            "actor": "'user-' || (g % 1000)",
            "resource_type": "'document'",
            "resource_id": "'doc-' || g",
            "description": "NULL",
            "metadata": "'{}'",
            "ip_address": "NULL",
            "user_agent": "NULL",
            "request_id": "'bench-' || g",
            # Pairs of rows share a timestamp, so the tie-break on id is exercised too.
            "created_at": "now() - (g / 2) * interval '1 millisecond'",
            "updated_at": "now() - (g / 2) * interval '1 millisecond'",
        }
        chosen = series if generated else single
        names: list[str] = []
        values: list[str] = []
        for column in columns:
            name, udt = column["column_name"], column["udt_name"]
            if name in chosen:
                names.append(f'"{name}"')
                values.append(f'({chosen[name]})::"{udt}"')
            elif udt.startswith("timestamp") and column["column_default"] is None:
                names.append(f'"{name}"')
                values.append("now()")
            elif column["column_default"] is None and column["is_nullable"] == "NO":
                raise RuntimeError(f"bench does not know how to fill {table}.{name}")
        return ", ".join(names), ", ".join(values)

    def million_rows(self) -> tuple[str, float]:
        """A second audits database holding 1,000,000 rows and its own audits service."""

        def build() -> tuple[str, float]:
            url = self.stack.database("bench_million")
            table = self.audit_table(url)
            names, values = self.audit_values(url, table, generated=True)
            started = time.perf_counter()
            asyncio.run(_bulk_insert(url, table, names, values))
            seconds = time.perf_counter() - started
            return self.audits("audits-million", "bench_million"), seconds

        built: tuple[str, float] = self.once("million", build)
        return built

    # -- load shapes ---------------------------------------------------------------------

    def http(
        self, target: Target, concurrency: int | None = None, watch: tuple[str, ...] = ()
    ) -> Callable[[float], Load]:
        """A wrk (or fallback) run of `target`; `watch` names processes (service keys or
        server names) whose CPU time per request is recorded."""
        c = concurrency or self.settings.concurrency
        pids = {name: self.stack.pid(name) for name in watch}
        return lambda duration: self.runner.http(target, c, duration, pids)

    def sdk(
        self, base_url: str, stream: bool, concurrency: int | None = None, key: str = "sk-bench"
    ) -> Callable[[float], Load]:
        args = ["--base-url", base_url, "--model", MODEL, "--api-key", key]
        args += ["--concurrency", str(concurrency or self.settings.concurrency)]
        if stream:
            args.append("--stream")
        return lambda duration: self.runner.module("bench.sdkclient", args, duration)

    def pair(
        self, reference: Callable[[float], Load], subject: Callable[[float], Load]
    ) -> tuple[Load, Load]:
        s = self.settings
        return paired(reference, subject, s.runs, s.duration, s.warmup)

    def repeat(self, subject: Callable[[float], Load], duration: float | None = None) -> Load:
        s = self.settings
        return repeated(subject, s.runs, duration or s.duration, s.warmup)


# -- rows -----------------------------------------------------------------------------------


def proxy(bench: Bench) -> list[Row]:
    path = "/api/v1/audits/bench-item"
    upstream = bench.upstream()
    gateway = bench.gateway_to_upstream()
    status, body = http_get(gateway + path)
    expect(status, body, 200, f"gateway GET {path} (to the trivial upstream)")
    direct, behind = bench.pair(
        bench.http(Target(upstream + path), watch=("upstream",)),
        bench.http(Target(gateway + path), watch=("gateway-upstream", "upstream")),
    )
    ratio = behind.rps / direct.rps
    p99_ok = (behind.p99_ms or 0) <= 2 * (direct.p99_ms or 0)
    verdict, note = judge(ratio >= 0.5 and p99_ok, behind)
    return [
        Row(
            key="proxy",
            path="trivial FastAPI upstream behind the gateway",
            value=rate(behind.rps),
            reference="the same upstream direct",
            ref_value=rate(direct.rps),
            ratio=f"{ratio:.2f}",
            p50=pair_ms(behind.p50_ms, direct.p50_ms),
            p99=pair_ms(behind.p99_ms, direct.p99_ms),
            target="≥0.5, p99 ≤2x direct",
            verdict=verdict,
            note=join(
                note,
                "" if p99_ok else "p99 over 2x direct",
                cpu_note(behind, gateway="gateway-upstream", upstream="upstream"),
                cpu_note(direct, "", **{"upstream direct": "upstream"}),
            ),
        )
    ]


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream bench {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def nginx(bench: Bench) -> list[Row]:
    binary = shutil.which("nginx")
    if binary is None:
        raise Skip("nginx is not installed (optional reference)")
    path = "/api/v1/audits/bench-item"
    upstream = bench.upstream()
    folder = bench.stack.workdir / "nginx"
    folder.mkdir(exist_ok=True)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(dir=folder, upstream=upstream.removeprefix("http://"), port=port)
    )
    process = bench.stack.spawn([binary, "-c", str(conf), "-p", str(folder)], "nginx")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            http_get(url + path, timeout=1)
            break
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"nginx did not start: {bench.stack.log_tail('nginx')}"
                ) from None
            time.sleep(0.05)
    try:
        direct, behind = bench.pair(
            bench.http(Target(upstream + path)), bench.http(Target(url + path))
        )
    finally:
        bench.stack.stop(process, signal.SIGQUIT)
    return [
        Row(
            key="nginx",
            path="trivial FastAPI upstream behind nginx (reference only)",
            value=rate(behind.rps),
            reference="the same upstream direct",
            ref_value=rate(direct.rps),
            ratio=f"{behind.rps / direct.rps:.2f}",
            p50=pair_ms(behind.p50_ms, direct.p50_ms),
            p99=pair_ms(behind.p99_ms, direct.p99_ms),
            target="-",
            verdict="INFO",
            note=failures(behind),
        )
    ]


def audits_get(bench: Bench) -> list[Row]:
    audits = bench.audits()
    status, body, _ = http_send(
        audits + "/api/v1/audits",
        "POST",
        json.dumps(AUDIT_BODY).encode(),
        dict([JSON_HEADER[0].split(": ")]),
    )
    expect(status, body, 201, "audits POST /api/v1/audits")
    path = f"/api/v1/audits/{json.loads(body)['id']}"
    status, body = http_get(audits + path)
    expect(status, body, 200, f"audits GET {path}")
    gateway = bench.gateway_real()
    status, body = http_get(gateway + path)
    expect(status, body, 200, f"gateway GET {path}")
    direct, behind = bench.pair(
        bench.http(Target(audits + path), watch=("audits",)),
        bench.http(Target(gateway + path), watch=("gateway", "audits")),
    )
    ratio = behind.rps / direct.rps
    verdict, note = judge(ratio >= 0.8, behind, direct)
    return [
        Row(
            key="audits-get",
            path="GET /api/v1/audits/{id} through the gateway",
            value=rate(behind.rps),
            reference="the same, direct to audits-service",
            ref_value=rate(direct.rps),
            ratio=f"{ratio:.2f}",
            p50=pair_ms(behind.p50_ms, direct.p50_ms),
            p99=pair_ms(behind.p99_ms, direct.p99_ms),
            target="≥0.8",
            verdict=verdict,
            note=join(
                note,
                cpu_note(behind, gateway="gateway", audits="audits"),
                cpu_note(direct, "", **{"audits direct": "audits"}),
            ),
        )
    ]


def audits_post(bench: Bench) -> list[Row]:
    audits = bench.audits()
    body = json.dumps(AUDIT_BODY)
    status, answer, _ = http_send(
        audits + "/api/v1/audits", "POST", body.encode(), {"Content-Type": "application/json"}
    )
    expect(status, answer, 201, "audits POST /api/v1/audits")
    url = bench.stack.database("bench")
    table = bench.audit_table(url)
    names, values = bench.audit_values(url, table, generated=False)
    sql = f'INSERT INTO "{table}" ({names}) VALUES ({values}) RETURNING *'  # noqa: S608
    concurrency = 16
    pg_args = ["--dsn", url, "--sql", sql, "--pool", "10", "--concurrency", str(concurrency)]
    raw, api = bench.pair(
        lambda d: bench.runner.module("bench.pgclient", pg_args, d),
        bench.http(
            Target(audits + "/api/v1/audits", "POST", body, JSON_HEADER),
            concurrency,
            watch=("audits",),
        ),
    )
    ratio = api.rps / raw.rps
    verdict, note = judge(ratio >= 0.4, api, raw)
    return [
        Row(
            key="audits-post",
            path="POST /api/v1/audits direct (16 concurrent)",
            value=rate(api.rps),
            reference="raw asyncpg INSERT … RETURNING, pool 10, 16 concurrent",
            ref_value=rate(raw.rps),
            ratio=f"{ratio:.2f}",
            p50=pair_ms(api.p50_ms, raw.p50_ms),
            p99=pair_ms(api.p99_ms, raw.p99_ms),
            target="≥0.4 (durable commits)",
            verdict=verdict,
            note=join(note, cpu_note(api, audits="audits")),
        )
    ]


def _page(audits: str, query: str) -> dict[str, Any]:
    status, body = http_get(f"{audits}/api/v1/audits?{query}", timeout=30)
    expect(status, body, 200, f"audits GET /api/v1/audits?{query}")
    page: dict[str, Any] = json.loads(body)
    return page


def audits_reads(bench: Bench) -> list[Row]:
    audits, seconds = bench.million_rows()
    first_query = "include_total=false"
    _page(audits, first_query)
    deep = _page(audits, f"include_total=false&offset={DEEP - 20}")
    cursor = deep.get("next_cursor")
    if not cursor:
        raise Skip("an offset page carries no next_cursor to start a deep keyset walk from")
    deep_query = f"include_total=false&cursor={cursor}"
    deep_page = _page(audits, deep_query)
    if not deep_page.get("items"):
        raise RuntimeError("the deep cursor page is empty")
    first, deep_load = bench.pair(
        bench.http(Target(f"{audits}/api/v1/audits?{first_query}"), 1),
        bench.http(Target(f"{audits}/api/v1/audits?{deep_query}"), 1),
    )
    ratio = (deep_load.p50_ms or 0) / (first.p50_ms or 1)
    first_verdict, first_note = judge((first.p50_ms or 99) <= 5, first)
    deep_verdict, deep_note = judge((deep_load.p50_ms or 99) <= 5 and ratio <= 1.5, deep_load)
    short = max(1.0, bench.settings.duration / 2)
    total = bench.runner.http(Target(f"{audits}/api/v1/audits"), 1, short)
    offset = bench.runner.http(
        Target(f"{audits}/api/v1/audits?offset={DEEP}&include_total=false"), 1, short
    )
    rows_note = f"{MILLION:,} rows generated in {seconds:.1f} s; concurrency 1"
    return [
        Row(
            key="audits-reads",
            path=f"GET /api/v1/audits first page at {MILLION:,} rows (include_total=false)",
            value=f"p50 {ms(first.p50_ms)} ms",
            ratio="",
            p50=ms(first.p50_ms),
            p99=ms(first.p99_ms),
            target="p50 ≤5 ms",
            verdict=first_verdict,
            note="; ".join(filter(None, [rows_note, first_note])),
        ),
        Row(
            key="audits-reads",
            path=f"GET /api/v1/audits cursor page {DEEP:,} rows deep",
            value=f"p50 {ms(deep_load.p50_ms)} ms",
            reference="the first page",
            ref_value=f"p50 {ms(first.p50_ms)} ms",
            ratio=f"{ratio:.2f}",
            p50=pair_ms(deep_load.p50_ms, first.p50_ms),
            p99=pair_ms(deep_load.p99_ms, first.p99_ms),
            target="p50 ≤5 ms, deep/first ≤1.5",
            verdict=deep_verdict,
            note=deep_note,
        ),
        Row(
            key="audits-reads",
            path="first page with the exact total (the default)",
            value=f"p50 {ms(total.p50_ms)} ms",
            p50=ms(total.p50_ms),
            p99=ms(total.p99_ms),
            target="-",
            verdict="INFO",
            note="exact count(*) of 1M rows; include_total=false skips it",
        ),
        Row(
            key="audits-reads",
            path=f"offset page {DEEP:,} deep (offset={DEEP})",
            value=f"p50 {ms(offset.p50_ms)} ms",
            p50=ms(offset.p50_ms),
            p99=ms(offset.p99_ms),
            target="-",
            verdict="INFO",
            note="why the cursor exists",
        ),
    ]


def _chat_target(base: str, stream: bool) -> Target:
    body = {**CHAT_BODY, "stream": True} if stream else CHAT_BODY
    return Target(base + "/api/v1/openai/chat", "POST", json.dumps(body), JSON_HEADER)


def _check_chat(base: str, what: str) -> None:
    status, body, _ = http_send(
        base + "/api/v1/openai/chat",
        "POST",
        json.dumps(CHAT_BODY).encode(),
        {"Content-Type": "application/json"},
        timeout=30,
    )
    expect(status, body, 200, f"{what} POST /api/v1/openai/chat")


def _llm_row(bench: Bench, stream: bool) -> list[Row]:
    standin = bench.standin()
    llm = bench.llm()
    _check_chat(llm, "llm-service")
    sdk, service = bench.pair(
        bench.sdk(standin + "/v1", stream),
        bench.http(_chat_target(llm, stream), watch=("llm",)),
    )
    ratio = service.rps / sdk.rps
    wanted = 0.85 if stream else 0.75
    verdict, note = judge(ratio >= wanted, service, sdk)
    kind = "streaming" if stream else "plain"
    return [
        Row(
            key="llm-stream" if stream else "llm",
            path=f"llm-service POST /api/v1/openai/chat, {kind}",
            value=rate(service.rps),
            reference=f"openai SDK → stand-in direct, {kind}",
            ref_value=rate(sdk.rps),
            ratio=f"{ratio:.2f}",
            p50=pair_ms(service.p50_ms, sdk.p50_ms),
            p99=pair_ms(service.p99_ms, sdk.p99_ms),
            target=f"≥{wanted}",
            verdict=verdict,
            note=join(
                note,
                cpu_note(service, **{"llm-service": "llm"}),
                cpu_note(sdk, "", **{"SDK client": "client"}),
            ),
        )
    ]


def llm_plain(bench: Bench) -> list[Row]:
    return _llm_row(bench, stream=False)


def llm_stream(bench: Bench) -> list[Row]:
    return _llm_row(bench, stream=True)


def llm_ttfc(bench: Bench) -> list[Row]:
    standin = bench.standin()
    llm = bench.llm()
    _check_chat(llm, "llm-service")
    direct, service = bench.pair(
        bench.sdk(standin + "/v1", True, 1), bench.sdk(llm + "/api/v1/openai/v1", True, 1)
    )
    first_direct = direct.extra.get("first_chunk_p50_ms")
    first_service = service.extra.get("first_chunk_p50_ms")
    if first_direct is None or first_service is None:
        raise RuntimeError("no first chunk measured")
    added = first_service - first_direct
    verdict, note = judge(added <= 1.0, service, direct)
    return [
        Row(
            key="llm-ttfc",
            path="time to first chunk via llm-service (SDK, OpenAI-compatible route)",
            value=f"{ms(first_service)} ms",
            reference="openai SDK → stand-in direct",
            ref_value=f"{ms(first_direct)} ms",
            ratio=f"+{added:.2f} ms",
            p50=pair_ms(service.p50_ms, direct.p50_ms),
            p99=pair_ms(service.p99_ms, direct.p99_ms),
            target="added ≤1 ms at concurrency 1",
            verdict=verdict,
            note=note or "p50/p99 are whole streams",
        )
    ]


def llm_gateway(bench: Bench) -> list[Row]:
    standin = bench.standin()
    bench.llm()
    gateway = bench.gateway_real()
    _check_chat(gateway, "gateway")
    sdk, through = bench.pair(
        bench.sdk(standin + "/v1", False),
        bench.http(_chat_target(gateway, False), watch=("gateway", "llm")),
    )
    ratio = through.rps / sdk.rps
    verdict, note = judge(ratio >= 0.6, through, sdk)
    return [
        Row(
            key="llm-gateway",
            path="gateway → llm-service POST /api/v1/openai/chat, plain",
            value=rate(through.rps),
            reference="openai SDK → stand-in direct, plain",
            ref_value=rate(sdk.rps),
            ratio=f"{ratio:.2f}",
            p50=pair_ms(through.p50_ms, sdk.p50_ms),
            p99=pair_ms(through.p99_ms, sdk.p99_ms),
            target="≥0.6",
            verdict=verdict,
            note=join(
                note,
                cpu_note(through, gateway="gateway", llm="llm"),
                cpu_note(sdk, "", **{"SDK client": "client"}),
            ),
        )
    ]


def litellm(bench: Bench) -> list[Row]:
    binary = shutil.which("litellm")
    if binary is None:
        raise Skip("LiteLLM is not installed (optional reference)")
    standin = bench.standin()
    port = free_port()
    master_key = "sk-" + secrets.token_hex(24)
    process = bench.stack.spawn(
        [
            binary,
            "--model",
            f"openai/{MODEL}",
            "--api_base",
            standin + "/v1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        "litellm",
        {
            "OPENAI_API_KEY": "sk-bench",
            "LITELLM_MASTER_KEY": master_key,
            # The model cost map ships with the package: no fetch from the internet.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        },
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if http_get(url + "/health/liveliness", timeout=1)[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"LiteLLM did not start: {bench.stack.log_tail('litellm')}")
        time.sleep(0.2)
    try:
        sdk, proxied = bench.pair(
            bench.sdk(standin + "/v1", False), bench.sdk(url, False, key=master_key)
        )
    finally:
        bench.stack.stop(process)
    return [
        Row(
            key="litellm",
            path="openai SDK → LiteLLM proxy → stand-in, plain (reference only)",
            value=rate(proxied.rps),
            reference="openai SDK → stand-in direct, plain",
            ref_value=rate(sdk.rps),
            ratio=f"{proxied.rps / sdk.rps:.2f}",
            p50=pair_ms(proxied.p50_ms, sdk.p50_ms),
            p99=pair_ms(proxied.p99_ms, sdk.p99_ms),
            target="-",
            verdict="INFO",
            note=failures(proxied),
        )
    ]


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _warm(url: str, requests: int = 50) -> None:
    for _ in range(requests):
        http_get(url)


def memory_idle(bench: Bench) -> list[Row]:
    rows: list[Row] = []
    starters: list[tuple[str, Callable[[], str], str]] = [
        ("audits", lambda: bench.audits("mem-audits"), "/api/v1/audits?limit=5"),
        ("llm", lambda: bench.llm("mem-llm"), "/health/ready"),
        ("gateway", lambda: bench.gateway_to_upstream("mem-gateway"), "/api/v1/audits/x"),
    ]
    for name, start, path in starters:
        try:
            url = start()
        except Skip as skip:
            rows.append(
                Row(key="memory-idle", path=f"{name} idle RSS", verdict="SKIP", note=str(skip))
            )
            continue
        _warm(url + path)
        time.sleep(1)
        rss = _rss_mb(bench.stack.pid(f"mem-{name}"))
        bench.stack.stop_service(f"mem-{name}")
        rows.append(
            Row(
                key="memory-idle",
                path=f"{name} idle RSS (after 50 requests)",
                value=f"{rss:.0f} MB",
                target="≤120 MB",
                verdict="PASS" if rss <= 120 else "FAIL",
            )
        )
    return rows


def memory_streams(bench: Bench) -> list[Row]:
    streams, chunks, interval = 1000, 12, 0.5
    upstream = bench.upstream()
    gateway = bench.gateway_to_upstream("mem-streams-gateway")
    pid = bench.stack.pid("mem-streams-gateway")
    path = f"{SLOW_STREAM_PATH}?chunks={chunks}&interval={interval}"
    status, body = http_get(upstream + f"{SLOW_STREAM_PATH}?chunks=1&interval=0")
    expect(status, body, 200, "upstream slow stream")
    status, body = http_get(gateway + f"{SLOW_STREAM_PATH}?chunks=1&interval=0")
    expect(status, body, 200, "gateway GET of the slow stream")
    _warm(gateway + "/api/v1/audits/x", 200)
    time.sleep(1)
    idle = _rss_mb(pid)
    command = [
        sys.executable,
        "-m",
        "bench.loadclient",
        gateway + path,
        "--concurrency",
        str(streams),
        "--duration",
        "1",
        "--once",
    ]
    client = bench.stack.start_tool(command)
    peak = idle
    deadline = time.monotonic() + chunks * interval + 60
    while client.poll() is None and time.monotonic() < deadline:
        peak = max(peak, _rss_mb(pid))
        time.sleep(0.1)
    result = json.loads(bench.stack.finish_tool(client, 5).splitlines()[-1])
    time.sleep(3)
    after = _rss_mb(pid)
    bench.stack.stop_service("mem-streams-gateway")
    growth = peak - idle
    completed = int(result["requests"]) - int(result["non_2xx"])
    concurrent = int(result["peak_active"])
    ok = growth <= 150 and after - idle <= 20 and completed == streams and concurrent >= streams
    note = f"{completed}/{streams} streams completed, {concurrent} open at once"
    note += f", {chunks} chunks at {interval} s each; idle {idle:.0f} MB"
    return [
        Row(
            key="memory-streams",
            path=f"gateway holding {streams:,} concurrent slow streams",
            value=f"+{growth:.0f} MB peak, {after - idle:+.0f} MB after",
            reference="gateway idle RSS",
            ref_value=f"{idle:.0f} MB",
            target="growth ≤150 MB, after ≤ idle+20 MB",
            verdict="PASS" if ok else "FAIL",
            note=note,
        )
    ]


def cold_start(bench: Bench) -> list[Row]:
    """`make run` from a fresh data directory to the gateway's /health/ready answering 200."""
    if not module_exists("gateway.main"):
        raise Skip("gateway.main does not exist yet")
    root = bench.stack.root
    runs: list[float] = []
    home = bench.stack.workdir / "coldstart"
    # devstack.run keeps its data under its repository root: a copy of the two folders it
    # reads gives it a throwaway root, so the bench never touches the user's .data.
    for folder in ("devstack", "migrations"):
        shutil.copytree(root / folder, home / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for attempt in range(2):
        ports = {name: str(free_port()) for name in ("GATEWAY_PORT", "AUDITS_PORT", "LLM_PORT")}
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update(ports, PYTHONPATH=str(home))
        started = time.perf_counter()
        process = bench.stack.spawn(
            [sys.executable, "-m", "devstack.run"], f"coldstart-{attempt}", env, cwd=home
        )
        ready_url = f"http://127.0.0.1:{ports['GATEWAY_PORT']}/health/ready"
        seconds: float | None = None
        deadline = started + 60
        try:
            while time.perf_counter() < deadline and process.poll() is None:
                try:
                    if http_get(ready_url, timeout=1)[0] == 200:
                        seconds = time.perf_counter() - started
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.05)
        finally:
            bench.stack.stop(process)
        if seconds is None:
            raise RuntimeError(
                f"not ready within 60 s: {bench.stack.log_tail(f'coldstart-{attempt}')}"
            )
        runs.append(seconds)
    first, second = runs
    return [
        Row(
            key="cold-start",
            path="make run (python -m devstack.run) to gateway /health/ready 200",
            value=f"{first:.1f} s",
            target="≤10 s",
            verdict="PASS" if first <= 10 else "FAIL",
            note=f"fresh data dir (initdb included); {second:.1f} s on the second start",
        )
    ]


ROWS: list[tuple[str, Callable[[Bench], list[Row]], str]] = [
    ("proxy", proxy, "trivial upstream behind the gateway vs direct"),
    ("nginx", nginx, "trivial upstream behind nginx (reference)"),
    ("audits-get", audits_get, "GET /api/v1/audits/{id} via the gateway vs direct"),
    ("audits-post", audits_post, "POST /api/v1/audits vs raw asyncpg INSERT … RETURNING"),
    ("audits-reads", audits_reads, "first and 500,000-deep cursor pages at 1,000,000 rows"),
    ("llm", llm_plain, "llm-service plain vs the openai SDK direct to the stand-in"),
    ("llm-stream", llm_stream, "llm-service streaming vs the SDK direct"),
    ("llm-ttfc", llm_ttfc, "added time to first chunk at concurrency 1"),
    ("llm-gateway", llm_gateway, "gateway → llm-service plain vs the SDK direct"),
    ("litellm", litellm, "LiteLLM proxy (reference)"),
    ("memory-idle", memory_idle, "idle RSS of each service"),
    ("memory-streams", memory_streams, "gateway RSS with 1,000 concurrent slow streams"),
    ("cold-start", cold_start, "make run cold start to ready"),
]
