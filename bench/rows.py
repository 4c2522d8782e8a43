"""The benchmark rows: each measures one hot path next to its physical limit in the same run
and judges it against the row's target."""

import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import psutil

from audits_service.trail.retention import PURGE_BATCH
from bench.load import Load, LoadRunner, Target, median_load, paired, repeated
from bench.report import Row, ms, pair_ms, rate
from bench.stack import Skip, Stack, http_get, http_send, wait_http
from bench.upstream import SLOW_STREAM_PATH
from devstack.postgres import free_port
from gateway.keys import Scope, file_entry, new_key

MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
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
        raise Skip(f"{what} answered {status}, not {wanted}: {snippet}")


def get_ok(url: str, what: str, timeout: float = 5.0) -> bytes:
    status, body = http_get(url, timeout=timeout)
    expect(status, body, 200, what)
    return body


def post_ok(
    url: str, body: str, wanted: int, what: str, timeout: float = 10.0, method: str = "POST"
) -> bytes:
    headers = {"Content-Type": "application/json"}
    status, answer, _ = http_send(url, method, body.encode(), headers, timeout=timeout)
    expect(status, answer, wanted, what)
    return answer


def latency_row(path: str, load: Load, target: str, verdict: str, note: str) -> Row:
    """A concurrency-1 audits-reads row: its value is the median latency."""
    return Row(
        key="audits-reads",
        path=path,
        value=f"p50 {ms(load.p50_ms)} ms",
        p50=ms(load.p50_ms),
        p99=ms(load.p99_ms),
        target=target,
        verdict=verdict,
        note=note,
    )


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

    def gateway_to_upstream(
        self,
        key: str = "gateway-upstream",
        auth: bool = False,
        extra: Mapping[str, str] | None = None,
    ) -> str:
        upstream = self.upstream()
        env = {
            "AUDITS_SERVICE_URL": upstream,
            "LLM_SERVICE_URL": upstream,
            "RATE_LIMIT_LLM_PER_MINUTE": "0",
            **(extra or {}),
        }
        return self.stack.service(key, "gateway", self.with_auth(env) if auth else env).url

    def audits(self, key: str = "audits", database: str = "bench") -> str:
        url = self.stack.service_database(database)
        return self.stack.service(key, "audits", {"DATABASE_URL": url}).url

    def standin(self) -> str:
        port = free_port()
        command = [sys.executable, "-m", "devstack.openai_standin", "--port", str(port)]
        return self.stack.server("openai-standin", command, port, "/v1/models")

    def llm(self, key: str = "llm") -> str:
        env = {
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": self.standin() + "/v1",
            "OPENAI_MODEL": MODEL,
            "OPENAI_ALLOWED_MODELS": EMBEDDING_MODEL,
        }
        return self.stack.service(key, "llm", env).url

    def api_key(self) -> tuple[str, str]:
        """A keys file admitting one key with every scope and a requests-per-minute limit
        no run reaches (its counter still runs on every request); (file, key)."""

        def build() -> tuple[str, str]:
            key = new_key()
            scopes = list(Scope)
            entry = file_entry("bench", key, scopes, {"requests_per_minute": 1_000_000_000})
            path = self.stack.workdir / "api-keys.json"
            path.write_text(json.dumps([entry]))
            return str(path), key

        made: tuple[str, str] = self.once("api-key", build)
        return made

    def with_auth(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, "AUTH_MODE": "api_key", "API_KEYS_FILE": self.api_key()[0]}

    def gateway_real(self, key: str = "gateway", auth: bool = False) -> str:
        """The gateway in front of the real audits and llm services (`auth`: with
        `AUTH_MODE=api_key`, see `api_key`)."""

        def build() -> str:
            env = {
                "AUDITS_SERVICE_URL": self.audits(),
                "LLM_SERVICE_URL": self.llm(),
                "RATE_LIMIT_LLM_PER_MINUTE": "0",
            }
            return self.stack.service(key, "gateway", self.with_auth(env) if auth else env).url

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

    def audit_values(
        self, database_url: str, table: str, generated: bool, age_days: int = 0
    ) -> tuple[str, str]:
        """Column list and SQL values for one audit row, from the table's real columns.

        `generated` builds `INSERT … SELECT` expressions over `g` (generate_series), created
        `age_days` ago and earlier, else a single row whose id and request ID are the
        statement's `$1`.
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
        created = f"now() - interval '{age_days} days' - (g / 2) * interval '1 millisecond'"
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
            "created_at": f"{created}",
            "updated_at": f"{created}",
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
        """A second audits database holding 1,000,000 rows and its own audits service, once
        its sealer has sealed the 1,000,000 `create` events: the rows using it measure
        reads in the steady state, not reads sharing the service with sealing a backlog."""

        def build() -> tuple[str, float]:
            url = self.stack.database("bench_million")
            table = self.audit_table(url)
            names, values = self.audit_values(url, table, generated=True)
            started = time.perf_counter()
            asyncio.run(_bulk_insert(url, table, names, values))
            seconds = time.perf_counter() - started
            audits = self.audits("audits-million", "bench_million")
            _await_sealed(audits, url)
            return audits, seconds

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
        self,
        base_url: str,
        stream: bool,
        concurrency: int | None = None,
        key: str = "sk-bench",
        kind: str = "chat",
        watch: tuple[str, ...] = (),
    ) -> Callable[[float], Load]:
        """A `bench.sdkclient` run of `kind` (`chat`, `embeddings`, `responses`); `watch`
        as in `http`."""
        model = EMBEDDING_MODEL if kind == "embeddings" else MODEL
        args = ["--base-url", base_url, "--model", model, "--api-key", key, "--kind", kind]
        args += ["--concurrency", str(concurrency or self.settings.concurrency)]
        if stream:
            args.append("--stream")
        pids = {name: self.stack.pid(name) for name in watch}
        return lambda duration: self.runner.module("bench.sdkclient", args, duration, pids)

    def pair(
        self, reference: Callable[[float], Load], subject: Callable[[float], Load]
    ) -> tuple[Load, Load]:
        s = self.settings
        return paired(reference, subject, s.runs, s.duration, s.warmup)

    def repeat(self, subject: Callable[[float], Load], duration: float | None = None) -> Load:
        s = self.settings
        return repeated(subject, s.runs, duration or s.duration, s.warmup)

    def compare(
        self,
        row: tuple[str, str, str, str],
        runs: tuple[Callable[[float], Load], Callable[[float], Load]],
        wanted: float | None,
        cpu: tuple[dict[str, str], dict[str, str]] = ({}, {}),
        p99_factor: float | None = None,
        judge_reference: bool = True,
    ) -> list[Row]:
        """The throughput row `(key, path, reference, target)`: alternate the (reference,
        subject) `runs`, take their medians, judge the subject/reference rate against
        `wanted` (None: a reference-only INFO row) and, if given, the subject's p99 against
        `p99_factor` x the reference's. `cpu` names the `cpu_note` labels of the subject's
        and the reference's run."""
        reference, subject = self.pair(*runs)
        ratio = subject.rps / reference.rps
        p99_ok = p99_factor is None or (subject.p99_ms or 0) <= p99_factor * (reference.p99_ms or 0)
        if wanted is None:
            verdict, note = "INFO", failures(subject)
        else:
            judged = (subject, reference) if judge_reference else (subject,)
            verdict, note = judge(ratio >= wanted and p99_ok, *judged)
        key, path, reference_path, target = row
        return [
            Row(
                key=key,
                path=path,
                value=rate(subject.rps),
                reference=reference_path,
                ref_value=rate(reference.rps),
                ratio=f"{ratio:.2f}",
                p50=pair_ms(subject.p50_ms, reference.p50_ms),
                p99=pair_ms(subject.p99_ms, reference.p99_ms),
                target=target,
                verdict=verdict,
                note=join(
                    note,
                    "" if p99_ok else f"p99 over {p99_factor:g}x direct",
                    cpu_note(subject, **cpu[0]),
                    cpu_note(reference, "", **cpu[1]),
                ),
            )
        ]


# -- rows -----------------------------------------------------------------------------------


def proxy(bench: Bench) -> list[Row]:
    path = "/api/v1/audits/bench-item"
    upstream = bench.upstream()
    gateway = bench.gateway_to_upstream()
    get_ok(gateway + path, f"gateway GET {path} (to the trivial upstream)")
    return bench.compare(
        (
            "proxy",
            "trivial FastAPI upstream behind the gateway",
            "the same upstream direct",
            "≥0.9, p99 ≤1.3x direct",
        ),
        (
            bench.http(Target(upstream + path), watch=("upstream",)),
            bench.http(Target(gateway + path), watch=("gateway-upstream", "upstream")),
        ),
        0.9,
        cpu=(
            {"gateway": "gateway-upstream", "upstream": "upstream"},
            {"upstream direct": "upstream"},
        ),
        p99_factor=1.3,
        judge_reference=False,
    )


def proxy_auth(bench: Bench) -> list[Row]:
    path = "/api/v1/audits/bench-item"
    plain = bench.gateway_to_upstream()
    guarded = bench.gateway_to_upstream("gateway-upstream-auth", auth=True)
    bearer = f"Authorization: Bearer {bench.api_key()[1]}"
    get_ok(plain + path, f"gateway GET {path} (to the trivial upstream)")
    return bench.compare(
        (
            "proxy-auth",
            "the proxy row's gateway with AUTH_MODE=api_key (a key with a request limit)",
            "the same gateway, AUTH_MODE=none",
            "≥0.9",
        ),
        (
            bench.http(Target(plain + path), watch=("gateway-upstream", "upstream")),
            bench.http(
                Target(guarded + path, headers=(bearer,)),
                watch=("gateway-upstream-auth", "upstream"),
            ),
        ),
        0.9,
        cpu=({"gateway": "gateway-upstream-auth"}, {"gateway": "gateway-upstream"}),
    )


def audits_get_auth(bench: Bench) -> list[Row]:
    gateway = bench.gateway_real()
    guarded = bench.gateway_real("gateway-auth", auth=True)
    bearer = f"Authorization: Bearer {bench.api_key()[1]}"
    created = post_ok(
        gateway + "/api/v1/audits", json.dumps(AUDIT_BODY), 201, "gateway POST /api/v1/audits"
    )
    path = f"/api/v1/audits/{json.loads(created)['id']}"
    get_ok(gateway + path, f"gateway GET {path}")
    return bench.compare(
        (
            "audits-get-auth",
            "GET /api/v1/audits/{id} through the gateway, AUTH_MODE=api_key",
            "the same, AUTH_MODE=none",
            "≥0.9",
        ),
        (
            bench.http(Target(gateway + path), watch=("gateway", "audits")),
            bench.http(Target(guarded + path, headers=(bearer,)), watch=("gateway-auth", "audits")),
        ),
        0.9,
        cpu=({"gateway": "gateway-auth"}, {"gateway": "gateway"}),
    )


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
    wait_http(url + path, process, "nginx", bench.stack, timeout=10)
    try:
        return bench.compare(
            (
                "nginx",
                "trivial FastAPI upstream behind nginx (reference only)",
                "the same upstream direct",
                "-",
            ),
            (bench.http(Target(upstream + path)), bench.http(Target(url + path))),
            None,
        )
    finally:
        bench.stack.stop(process, signal.SIGQUIT)


def audits_get(bench: Bench) -> list[Row]:
    audits = bench.audits()
    created = post_ok(
        audits + "/api/v1/audits", json.dumps(AUDIT_BODY), 201, "audits POST /api/v1/audits"
    )
    path = f"/api/v1/audits/{json.loads(created)['id']}"
    get_ok(audits + path, f"audits GET {path}")
    gateway = bench.gateway_real()
    get_ok(gateway + path, f"gateway GET {path}")
    return bench.compare(
        (
            "audits-get",
            "GET /api/v1/audits/{id} through the gateway",
            "the same, direct to audits-service",
            "≥0.9",
        ),
        (
            bench.http(Target(audits + path), watch=("audits",)),
            bench.http(Target(gateway + path), watch=("gateway", "audits")),
        ),
        0.9,
        cpu=({"gateway": "gateway", "audits": "audits"}, {"audits direct": "audits"}),
    )


def audits_post(bench: Bench) -> list[Row]:
    audits = bench.audits()
    body = json.dumps(AUDIT_BODY)
    post_ok(audits + "/api/v1/audits", body, 201, "audits POST /api/v1/audits")
    url = bench.stack.database("bench")
    table = bench.audit_table(url)
    names, values = bench.audit_values(url, table, generated=False)
    sql = f'INSERT INTO "{table}" ({names}) VALUES ({values}) RETURNING *'  # noqa: S608
    concurrency = 16
    pg_args = ["--dsn", url, "--sql", sql, "--pool", "10", "--concurrency", str(concurrency)]
    return bench.compare(
        (
            "audits-post",
            "POST /api/v1/audits direct (16 concurrent)",
            "raw asyncpg INSERT … RETURNING, pool 10, 16 concurrent",
            "≥0.25 (durable commits, trail on)",
        ),
        (
            lambda d: bench.runner.module("bench.pgclient", pg_args, d),
            bench.http(
                Target(audits + "/api/v1/audits", "POST", body, JSON_HEADER),
                concurrency,
                watch=("audits",),
            ),
        ),
        0.25,
        cpu=({"audits": "audits"}, {}),
    )


PUT_BODY = {"status": "failure", "description": "benchmark update"}


def audits_put(bench: Bench) -> list[Row]:
    """PUT of one record over and over (16 concurrent), against raw asyncpg updating the
    same row: both wait for the same row lock, and the trail's trigger logs every update."""
    audits = bench.audits()
    created = post_ok(audits + "/api/v1/audits", json.dumps(AUDIT_BODY), 201, "audits POST")
    audit_id = json.loads(created)["id"]
    body = json.dumps(PUT_BODY)
    target = Target(f"{audits}/api/v1/audits/{audit_id}", "PUT", body, JSON_HEADER)
    post_ok(target.url, body, 200, "audits PUT /api/v1/audits/{id}", method="PUT")
    url = bench.stack.database("bench")
    table = bench.audit_table(url)
    sql = (
        f"UPDATE \"{table}\" SET status = 'failure', description = 'benchmark update', "  # noqa: S608
        f"updated_at = greatest(now(), updated_at + interval '1 microsecond') "
        f"WHERE id = '{audit_id}' AND set_config('audit.request_id', $1, true) IS NOT NULL "
        "RETURNING *"
    )
    concurrency = 16
    pg_args = ["--dsn", url, "--sql", sql, "--pool", "10", "--concurrency", str(concurrency)]
    return bench.compare(
        (
            "audits-put",
            "PUT /api/v1/audits/{id} direct (16 concurrent, one record)",
            "raw asyncpg UPDATE … RETURNING of the same row, pool 10, 16 concurrent",
            "≥0.25 (durable commits, trail on)",
        ),
        (
            lambda d: bench.runner.module("bench.pgclient", pg_args, d),
            bench.http(target, concurrency, watch=("audits",)),
        ),
        0.25,
        cpu=({"audits": "audits"}, {}),
    )


def _trail_trigger(url: str, enabled: bool) -> None:
    state = "ENABLE" if enabled else "DISABLE"
    run_sql(url, f"ALTER TABLE audit_record {state} TRIGGER audit_record_log_event")


def _trail_off(url: str, run: Callable[[float], Load]) -> Callable[[float], Load]:
    """`run` with the audit trail's trigger off: the first release's write path."""

    def without_trail(duration: float) -> Load:
        _trail_trigger(url, enabled=False)
        try:
            return run(duration)
        finally:
            _trail_trigger(url, enabled=True)

    return without_trail


def audits_post_trail(bench: Bench) -> list[Row]:
    audits = bench.audits()
    url = bench.stack.database("bench")
    body = json.dumps(AUDIT_BODY)
    post_ok(audits + "/api/v1/audits", body, 201, "audits POST /api/v1/audits")
    post = bench.http(
        Target(audits + "/api/v1/audits", "POST", body, JSON_HEADER), 16, watch=("audits",)
    )
    return bench.compare(
        (
            "trail-post",
            "POST /api/v1/audits with the audit trail (16 concurrent)",
            "the same POST with the trail's trigger off",
            "≥0.9",
        ),
        (_trail_off(url, post), post),
        0.9,
        cpu=({"audits": "audits"}, {"audits": "audits"}),
    )


def audits_verify(bench: Bench) -> list[Row]:
    """`GET /api/v1/audits/verify` over 1,000,000 sealed events (each a record's create)."""
    url = bench.stack.database("verify")
    table = bench.audit_table(url)
    names, values = bench.audit_values(url, table, generated=True)
    asyncio.run(_bulk_insert(url, table, names, values))
    run_sql(url, "ANALYZE audit_event")
    audits = bench.audits("trail-verify", "verify")
    deadline = time.monotonic() + 600
    while json.loads(http_get(audits + "/api/v1/audits/head")[1])["seq"] < MILLION:
        if time.monotonic() > deadline:
            raise RuntimeError("the sealer did not seal 1,000,000 events within 10 minutes")
        time.sleep(2)
    # Through a gateway with the default AUDITS_TIMEOUT (10 s), as an auditor calls it.
    env = {"AUDITS_SERVICE_URL": audits, "LLM_SERVICE_URL": audits}
    gateway = bench.stack.service("gateway-verify", "gateway", env).url
    started = time.perf_counter()
    status, body = http_get(gateway + "/api/v1/audits/verify", timeout=600)
    seconds = time.perf_counter() - started
    report = json.loads(body) if status == 200 else {}
    intact = report.get("status") == "intact"
    padding = len(body) - len(body.lstrip())
    return [
        Row(
            key="trail-verify",
            path="GET /api/v1/audits/verify, 1,000,000 sealed events, through the gateway",
            value=f"{seconds:.1f} s",
            target="≤30 s",
            verdict="PASS" if intact and seconds <= 30 else "FAIL",
            note=f"{report.get('events_checked')} events, "
            f"{report.get('checkpoints_checked')} checkpoints; status {status}, "
            f"{padding} keep-alive spaces before the report (AUDITS_TIMEOUT 10 s)",
        )
    ]


RETENTION_DAYS = 30


def _await_sealed(audits: str, url: str, timeout: float = 900) -> None:
    """Waits until the service's sealer has sealed every event in the database."""
    last = run_sql(url, "SELECT coalesce(max(seq), 0) AS seq FROM audit_event")[0]["seq"]
    deadline = time.monotonic() + timeout
    while json.loads(http_get(audits + "/api/v1/audits/head")[1])["seq"] < last:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sealer did not reach seq {last} within {timeout:g} s")
        time.sleep(2)


def _sealed_verify(audits: str, url: str, timeout: float = 900) -> tuple[dict[str, Any], float]:
    """Waits until the sealer has sealed every event, then verifies; returns the report
    and the seconds the verification took."""
    _await_sealed(audits, url, timeout)
    started = time.perf_counter()
    status, body = http_get(audits + "/api/v1/audits/verify", timeout=timeout)
    expect(status, body, 200, "audits GET /api/v1/audits/verify")
    report: dict[str, Any] = json.loads(body)
    return report, time.perf_counter() - started


def audits_retention(bench: Bench) -> list[Row]:
    """The retention purge of 1,000,000 expired records (the service's own job, as its own
    process), with POSTs running all along; then sealing and `verify`."""
    url = bench.stack.database("retention")
    table = bench.audit_table(url)
    names, values = bench.audit_values(url, table, generated=True, age_days=RETENTION_DAYS + 10)
    asyncio.run(_bulk_insert(url, table, names, values))
    audits = bench.audits("retention", "retention")
    body = json.dumps(AUDIT_BODY)
    post_ok(audits + "/api/v1/audits", body, 201, "audits POST /api/v1/audits")
    post = bench.http(
        Target(audits + "/api/v1/audits", "POST", body, JSON_HEADER), 16, watch=("retention",)
    )
    before = bench.repeat(post)
    purge = bench.stack.start_tool(
        [sys.executable, "-m", "bench.purgeclient", "--dsn",
         bench.stack.service_database("retention"), "--days", str(RETENTION_DAYS)]
    )  # fmt: skip
    during: list[Load] = []
    while purge.poll() is None and len(during) < 100:
        during.append(post(bench.settings.duration))
    result = json.loads(bench.stack.finish_tool(purge, 1800).splitlines()[-1])
    # The last run may have outlasted the purge; any before it ran entirely during it.
    writes = median_load(during[:-1] or during)
    worst_p99 = max(load.p99_ms or 0 for load in during)
    failed = sum(load.errors + load.non_2xx for load in during)
    expired = "SELECT count(*) FROM audit_record WHERE created_at < now() - $1 * interval '1 day'"
    left = run_sql(url, expired, RETENTION_DAYS)[0][0]
    report, verify_s = _sealed_verify(audits, url)
    purged_ok = result["purged"] == MILLION and left == 0 and report["status"] == "intact"
    ratio = writes.rps / before.rps
    # The purge shares the CPU with the writers, so they slow down; a lock held across
    # batches would stall them for the whole purge instead.
    p99_ok = (writes.p99_ms or 0) <= 3 * (before.p99_ms or 0)
    return [
        Row(
            key="trail-retention",
            path=f"retention purge of {MILLION:,} expired records, {PURGE_BATCH:,} per batch",
            value=f"{result['purged'] / result['seconds']:,.0f} rows/s",
            target="all purged, verify intact",
            verdict="PASS" if purged_ok else "FAIL",
            note=f"{result['purged']:,} purged in {result['seconds']:.1f} s, {left} left; "
            f"then verify {report['status']} over {report['events_checked']:,} events "
            f"in {verify_s:.1f} s",
        ),
        Row(
            key="trail-retention",
            path="POST /api/v1/audits during that purge (16 concurrent)",
            value=rate(writes.rps),
            reference="the same POST before the purge",
            ref_value=rate(before.rps),
            ratio=f"{ratio:.2f}",
            p50=pair_ms(writes.p50_ms, before.p50_ms),
            p99=pair_ms(writes.p99_ms, before.p99_ms),
            target="every write succeeds, p99 ≤3x before",
            verdict="PASS" if failed == 0 and len(during) > 1 and p99_ok else "FAIL",
            note=join(
                f"{len(during)} runs of {bench.settings.duration:g} s while purging; "
                f"worst p99 {worst_p99:.0f} ms; {failed} failed",
                cpu_note(writes, audits="retention"),
            ),
        ),
    ]


def _page(audits: str, query: str) -> dict[str, Any]:
    body = get_ok(f"{audits}/api/v1/audits?{query}", f"audits GET /api/v1/audits?{query}", 30)
    page: dict[str, Any] = json.loads(body)
    return page


PAGE = 50
LIST_P50_MS = 1.5


def _page_row(path: str, page: tuple[Load, Load], target: str, ok: bool, note: str) -> Row:
    direct, gateway = page
    verdict, failed = judge(ok, gateway)
    return Row(
        key="audits-reads",
        path=path,
        value=f"p50 {ms(gateway.p50_ms)} ms",
        reference="the same page direct to audits-service",
        ref_value=f"p50 {ms(direct.p50_ms)} ms",
        p50=pair_ms(gateway.p50_ms, direct.p50_ms),
        p99=pair_ms(gateway.p99_ms, direct.p99_ms),
        target=target,
        verdict=verdict,
        note=join(
            failed, note, cpu_note(gateway, gateway="gateway-reads", audits="audits-million")
        ),
    )


def audits_reads(bench: Bench) -> list[Row]:
    audits, seconds = bench.million_rows()
    env = {"AUDITS_SERVICE_URL": audits, "LLM_SERVICE_URL": audits}
    gateway = bench.stack.service("gateway-reads", "gateway", env).url
    first_query = f"limit={PAGE}&include_total=false"
    _page(gateway, first_query)
    deep = _page(audits, f"include_total=false&offset={DEEP - PAGE}&limit={PAGE}")
    cursor = deep.get("next_cursor")
    if not cursor:
        raise Skip("an offset page carries no next_cursor to start a deep keyset walk from")
    deep_query = f"limit={PAGE}&include_total=false&cursor={cursor}"
    if len(_page(gateway, deep_query).get("items", [])) != PAGE:
        raise RuntimeError(f"the deep cursor page does not hold {PAGE} records")
    watch = ("gateway-reads", "audits-million")

    def page(query: str) -> tuple[Load, Load]:
        return bench.pair(
            bench.http(Target(f"{audits}/api/v1/audits?{query}"), 1),
            bench.http(Target(f"{gateway}/api/v1/audits?{query}"), 1, watch=watch),
        )

    first, deep_page = page(first_query), page(deep_query)
    ratio = (deep_page[1].p50_ms or 0) / (first[1].p50_ms or 1)
    short = max(1.0, bench.settings.duration / 2)
    total = bench.runner.http(Target(f"{audits}/api/v1/audits"), 1, short)
    offset = bench.runner.http(
        Target(f"{audits}/api/v1/audits?offset={DEEP}&include_total=false"), 1, short
    )
    bench.stack.stop_service("gateway-reads")
    rows_note = f"{MILLION:,} rows generated in {seconds:.1f} s; concurrency 1"
    target = f"p50 ≤{LIST_P50_MS:g} ms via the gateway"
    return [
        _page_row(
            f"GET /api/v1/audits first page of {PAGE} at {MILLION:,} rows via the gateway "
            "(include_total=false)",
            first,
            target,
            (first[1].p50_ms or 99) <= LIST_P50_MS,
            rows_note,
        ),
        _page_row(
            f"GET /api/v1/audits cursor page of {PAGE}, {DEEP:,} rows deep, via the gateway",
            deep_page,
            f"{target}, deep/first ≤1.5",
            (deep_page[1].p50_ms or 99) <= LIST_P50_MS and ratio <= 1.5,
            f"deep/first p50 {ratio:.2f}",
        ),
        latency_row(
            "first page with the exact total (the default), direct",
            total,
            "-",
            "INFO",
            "exact count(*) of 1M rows; include_total=false skips it",
        ),
        latency_row(
            f"offset page {DEEP:,} deep (offset={DEEP}), direct",
            offset,
            "-",
            "INFO",
            "why the cursor exists",
        ),
    ]


BATCH_ROWS = 500
BATCH_CONCURRENCY = 4


def audits_batch(bench: Bench) -> list[Row]:
    audits = bench.audits()
    body = json.dumps({"records": [AUDIT_BODY] * BATCH_ROWS})
    post_ok(audits + "/api/v1/audits/batch", body, 201, "audits POST /api/v1/audits/batch", 30)
    url = bench.stack.database("bench")
    table = bench.audit_table(url)
    names, values = bench.audit_values(url, table, generated=False)
    sql = f'INSERT INTO "{table}" ({names}) VALUES ({values})'  # noqa: S608
    pg_args = ["--dsn", url, "--sql", sql, "--rows", str(BATCH_ROWS)]
    pg_args += ["--pool", str(BATCH_CONCURRENCY), "--concurrency", str(BATCH_CONCURRENCY)]
    reference, subject = bench.pair(
        lambda d: bench.runner.module("bench.pgclient", pg_args, d),
        bench.http(
            Target(audits + "/api/v1/audits/batch", "POST", body, JSON_HEADER),
            BATCH_CONCURRENCY,
            watch=("audits",),
        ),
    )
    ratio = subject.rps / reference.rps
    verdict, note = judge(ratio >= 0.5, subject, reference)
    return [
        Row(
            key="audits-batch",
            path=f"POST /api/v1/audits/batch, {BATCH_ROWS} records each, direct "
            f"({BATCH_CONCURRENCY} concurrent)",
            value=f"{subject.rps * BATCH_ROWS:,.0f} rows/s",
            reference=f"raw asyncpg executemany of the same rows, {BATCH_ROWS} per call, "
            f"{BATCH_CONCURRENCY} concurrent",
            ref_value=f"{reference.rps * BATCH_ROWS:,.0f} rows/s",
            ratio=f"{ratio:.2f}",
            p50=pair_ms(subject.p50_ms, reference.p50_ms),
            p99=pair_ms(subject.p99_ms, reference.p99_ms),
            target="≥0.5",
            verdict=verdict,
            note=join(note, cpu_note(subject, audits="audits")),
        )
    ]


def _read_export(bench: Bench, *args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.exportclient", *args]
    result: dict[str, Any] = json.loads(bench.stack.tool(command, 600).splitlines()[-1])
    return result


def audits_export(bench: Bench) -> list[Row]:
    audits, _ = bench.million_rows()
    env = {"AUDITS_SERVICE_URL": audits, "LLM_SERVICE_URL": audits}
    gateway = bench.stack.service("gateway-export", "gateway", env).url
    get_ok(gateway + "/api/v1/audits/export?actor=user-1", "gateway GET /api/v1/audits/export")
    url = bench.stack.database("bench_million")
    table = bench.audit_table(url)
    sql = f'SELECT * FROM "{table}" ORDER BY created_at DESC, id DESC'  # noqa: S608
    pid = bench.stack.pid("gateway-export")
    _warm(gateway + "/api/v1/audits/export?actor=user-2", 5)
    idle = _rss_mb(pid)
    reference = _read_export(bench, "cursor", url, sql)
    client = bench.stack.start_tool(
        [sys.executable, "-m", "bench.exportclient", "http", gateway + "/api/v1/audits/export"]
    )
    peak = idle
    while client.poll() is None:
        peak = max(peak, _rss_mb(pid))
        time.sleep(0.05)
    subject: dict[str, Any] = json.loads(bench.stack.finish_tool(client, 5).splitlines()[-1])
    bench.stack.stop_service("gateway-export")
    growth = peak - idle
    subject_rate = subject["rows"] / subject["seconds"]
    reference_rate = reference["rows"] / reference["seconds"]
    ratio = subject_rate / reference_rate
    complete = subject["rows"] == reference["rows"] == MILLION and subject["error"] is None
    ok = complete and ratio >= 0.3 and growth <= 30
    return [
        Row(
            key="audits-export",
            path=f"GET /api/v1/audits/export NDJSON of {MILLION:,} rows through the gateway",
            value=f"{subject_rate:,.0f} rows/s",
            reference="raw asyncpg cursor (prefetch 1000) over the same rows and order",
            ref_value=f"{reference_rate:,.0f} rows/s",
            ratio=f"{ratio:.2f}",
            target="≥0.3, gateway RSS growth ≤30 MB",
            verdict="PASS" if ok else "FAIL",
            note=f"gateway RSS +{growth:.0f} MB (idle {idle:.0f} MB); {subject['rows']:,} lines, "
            f"{subject['bytes'] / 2**20:,.0f} MiB in {subject['seconds']:.1f} s; one run each",
        )
    ]


def _chat_target(base: str, stream: bool) -> Target:
    body = {**CHAT_BODY, "stream": True} if stream else CHAT_BODY
    return Target(base + "/api/v1/openai/chat", "POST", json.dumps(body), JSON_HEADER)


def _check_chat(base: str, what: str) -> None:
    post_ok(
        base + "/api/v1/openai/chat",
        json.dumps(CHAT_BODY),
        200,
        f"{what} POST /api/v1/openai/chat",
        30,
    )


def _llm_row(bench: Bench, stream: bool) -> list[Row]:
    standin = bench.standin()
    llm = bench.llm()
    _check_chat(llm, "llm-service")
    wanted = 0.85 if stream else 0.75
    kind = "streaming" if stream else "plain"
    return bench.compare(
        (
            "llm-stream" if stream else "llm",
            f"llm-service POST /api/v1/openai/chat, {kind}",
            f"openai SDK → stand-in direct, {kind}",
            f"≥{wanted}",
        ),
        (
            bench.sdk(standin + "/v1", stream),
            bench.http(_chat_target(llm, stream), watch=("llm",)),
        ),
        wanted,
        cpu=({"llm-service": "llm"}, {"SDK client": "client"}),
    )


def llm_plain(bench: Bench) -> list[Row]:
    return _llm_row(bench, stream=False)


def llm_stream(bench: Bench) -> list[Row]:
    return _llm_row(bench, stream=True)


TTFC_ADDED_MS = 1.5


def llm_ttfc(bench: Bench) -> list[Row]:
    standin = bench.standin()
    gateway = bench.gateway_real()
    _check_chat(gateway, "gateway")
    direct, proxied = bench.pair(
        bench.sdk(standin + "/v1", True, 1),
        bench.sdk(gateway + "/api/v1/openai/v1", True, 1, watch=("gateway", "llm")),
    )
    first_direct = direct.extra.get("first_chunk_p50_ms")
    first_proxied = proxied.extra.get("first_chunk_p50_ms")
    if first_direct is None or first_proxied is None:
        raise RuntimeError("no first chunk measured")
    added = first_proxied - first_direct
    verdict, note = judge(added <= TTFC_ADDED_MS, proxied, direct)
    return [
        Row(
            key="llm-ttfc",
            path="time to first chunk via gateway → llm-service (SDK, OpenAI-compatible route)",
            value=f"{ms(first_proxied)} ms",
            reference="openai SDK → stand-in direct",
            ref_value=f"{ms(first_direct)} ms",
            ratio=f"+{added:.2f} ms",
            p50=pair_ms(proxied.p50_ms, direct.p50_ms),
            p99=pair_ms(proxied.p99_ms, direct.p99_ms),
            target=f"added ≤{TTFC_ADDED_MS:g} ms at concurrency 1",
            verdict=verdict,
            note=join(
                note, "p50/p99 are whole streams", cpu_note(proxied, gateway="gateway", llm="llm")
            ),
        )
    ]


SDK_CONCURRENCY = 16


def _sdk_gateway_row(bench: Bench, stream: bool) -> list[Row]:
    standin = bench.standin()
    gateway = bench.gateway_real()
    _check_chat(gateway, "gateway")
    wanted = 0.9 if stream else 0.8
    kind = "streaming" if stream else "plain"
    c = SDK_CONCURRENCY
    return bench.compare(
        (
            "llm-sdk-stream" if stream else "llm-sdk",
            f"openai SDK → gateway → llm-service, {kind}, {c} concurrent",
            f"openai SDK → stand-in direct, {kind}",
            f"≥{wanted}",
        ),
        (
            bench.sdk(standin + "/v1", stream, c),
            bench.sdk(gateway + "/api/v1/openai/v1", stream, c, watch=("gateway", "llm")),
        ),
        wanted,
        cpu=(
            {"gateway": "gateway", "llm": "llm", "SDK client": "client"},
            {"SDK client": "client"},
        ),
    )


def llm_sdk(bench: Bench) -> list[Row]:
    return _sdk_gateway_row(bench, stream=False)


def llm_sdk_stream(bench: Bench) -> list[Row]:
    return _sdk_gateway_row(bench, stream=True)


def llm_gateway(bench: Bench) -> list[Row]:
    standin = bench.standin()
    bench.llm()
    gateway = bench.gateway_real()
    _check_chat(gateway, "gateway")
    return bench.compare(
        (
            "llm-gateway",
            "gateway → llm-service POST /api/v1/openai/chat, plain",
            "openai SDK → stand-in direct, plain",
            "≥0.6",
        ),
        (
            bench.sdk(standin + "/v1", False),
            bench.http(_chat_target(gateway, False), watch=("gateway", "llm")),
        ),
        0.6,
        cpu=({"gateway": "gateway", "llm": "llm"}, {"SDK client": "client"}),
    )


def _sdk_via_gateway(bench: Bench, key: str, kind: str, stream: bool, wanted: float) -> list[Row]:
    """The official SDK's `kind` call through gateway → llm-service → stand-in, next to the
    same SDK calling the stand-in directly: the same client on both sides, so the ratio is
    what the two hops cost."""
    standin = bench.standin()
    bench.llm()
    gateway = bench.gateway_real()
    what = f"{kind}, streaming" if stream else kind
    return bench.compare(
        (
            key,
            f"openai SDK → gateway → llm-service, {what}",
            f"openai SDK → stand-in direct, {what}",
            f"≥{wanted}",
        ),
        (
            bench.sdk(standin + "/v1", stream, kind=kind),
            bench.sdk(gateway + "/api/v1/openai/v1", stream, kind=kind, watch=("gateway", "llm")),
        ),
        wanted,
        cpu=(
            {"gateway": "gateway", "llm": "llm", "SDK client": "client"},
            {"SDK client": "client"},
        ),
    )


def llm_embeddings(bench: Bench) -> list[Row]:
    return _sdk_via_gateway(bench, "llm-embeddings", "embeddings", stream=False, wanted=0.8)


def llm_responses_stream(bench: Bench) -> list[Row]:
    return _sdk_via_gateway(bench, "llm-responses", "responses", stream=True, wanted=0.9)


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
    wait_http(url + "/health/liveliness", process, "litellm", bench.stack, 60, 0.2, 200)
    try:
        return bench.compare(
            (
                "litellm",
                "openai SDK → LiteLLM proxy → stand-in, plain (reference only)",
                "openai SDK → stand-in direct, plain",
                "-",
            ),
            (bench.sdk(standin + "/v1", False), bench.sdk(url, False, key=master_key)),
            None,
        )
    finally:
        bench.stack.stop(process)


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


STREAMS = 1000
LEAK_MB = 5.0


def _stream_round(
    bench: Bench, url: str, pid: int, deadline_s: float
) -> tuple[float, dict[str, Any]]:
    """Holds `STREAMS` streams of `url` at once until they end: (peak RSS, the client's result)."""
    command = [sys.executable, "-m", "bench.loadclient", url, "--concurrency", str(STREAMS)]
    client = bench.stack.start_tool([*command, "--duration", "1", "--once"])
    peak = 0.0
    deadline = time.monotonic() + deadline_s
    while client.poll() is None and time.monotonic() < deadline:
        peak = max(peak, _rss_mb(pid))
        time.sleep(0.1)
    result: dict[str, Any] = json.loads(bench.stack.finish_tool(client, 5).splitlines()[-1])
    return peak, result


def memory_streams(bench: Bench) -> list[Row]:
    """Two rounds of 1,000 concurrent slow streams through a fresh gateway: the peak, what
    is left after each, and what the second round left beyond the first (a leak grows it)."""
    chunks, interval = 12, 0.5
    upstream = bench.upstream()
    gateway = bench.gateway_to_upstream("mem-streams-gateway")
    pid = bench.stack.pid("mem-streams-gateway")
    path = f"{SLOW_STREAM_PATH}?chunks={chunks}&interval={interval}"
    get_ok(upstream + f"{SLOW_STREAM_PATH}?chunks=1&interval=0", "upstream slow stream")
    get_ok(gateway + f"{SLOW_STREAM_PATH}?chunks=1&interval=0", "gateway GET of the slow stream")
    _warm(gateway + "/api/v1/audits/x", 200)
    time.sleep(1)
    idle = _rss_mb(pid)
    peaks: list[float] = []
    afters: list[float] = []
    complete = True
    for _ in range(2):
        peak, result = _stream_round(bench, gateway + path, pid, chunks * interval + 60)
        time.sleep(3)
        peaks.append(max(peak, idle))
        afters.append(_rss_mb(pid))
        completed = int(result["requests"]) - int(result["non_2xx"])
        complete = complete and completed == STREAMS and int(result["peak_active"]) >= STREAMS
    bench.stack.stop_service("mem-streams-gateway")
    growth = max(peaks) - idle
    leak = afters[1] - afters[0]
    ok = complete and growth <= 150 and afters[0] - idle <= 20 and leak <= LEAK_MB
    note = f"{STREAMS:,} streams per round, all open at once and complete: {complete}"
    note += f"; {chunks} chunks at {interval} s each; after round 1 {afters[0] - idle:+.1f} MB"
    return [
        Row(
            key="memory-streams",
            path=f"gateway holding {STREAMS:,} concurrent slow streams, two rounds",
            value=f"+{growth:.0f} MB peak, round 2 left {leak:+.1f} MB over round 1",
            reference="gateway idle RSS",
            ref_value=f"{idle:.0f} MB",
            target=f"growth ≤150 MB, after ≤ idle+20 MB, round 2 ≤ round 1 +{LEAK_MB:g} MB",
            verdict="PASS" if ok else "FAIL",
            note=note,
        )
    ]


def cold_start(bench: Bench) -> list[Row]:
    """`make run` from a fresh data directory to the gateway's /health/ready answering 200."""
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
        try:
            wait_http(ready_url, process, f"coldstart-{attempt}", bench.stack, 60, status=200)
            runs.append(time.perf_counter() - started)
        finally:
            bench.stack.stop(process)
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


# -- observability ------------------------------------------------------------------------

METRICS_OFF = {"METRICS_ENABLED": "false"}


def _audits_behind_gateway(bench: Bench, key: str, env: Mapping[str, str]) -> tuple[str, str]:
    """A record's path, and a gateway in front of an audits service, both started with `env`."""
    url = bench.stack.service_database("bench")
    audits = bench.stack.service(f"{key}-audits", "audits", {"DATABASE_URL": url, **env}).url
    settings = {"AUDITS_SERVICE_URL": audits, "LLM_SERVICE_URL": audits, **env}
    gateway = bench.stack.service(f"{key}-gateway", "gateway", settings).url
    created = post_ok(audits + "/api/v1/audits", json.dumps(AUDIT_BODY), 201, "audits POST")
    path = f"/api/v1/audits/{json.loads(created)['id']}"
    get_ok(gateway + path, f"gateway GET {path} ({key})")
    return gateway, path


def metrics_proxy(bench: Bench) -> list[Row]:
    path = "/api/v1/audits/bench-item"
    on = bench.gateway_to_upstream("gateway-metrics-on")
    off = bench.gateway_to_upstream("gateway-metrics-off", extra=METRICS_OFF)
    get_ok(on + path, "gateway GET (metrics on)")
    get_ok(off + path, "gateway GET (metrics off)")
    return bench.compare(
        (
            "metrics-proxy",
            "gateway to the trivial upstream, metrics on (default)",
            "the same gateway with METRICS_ENABLED=false",
            "≥0.95",
        ),
        (
            bench.http(Target(off + path), watch=("gateway-metrics-off", "upstream")),
            bench.http(Target(on + path), watch=("gateway-metrics-on", "upstream")),
        ),
        0.95,
        cpu=({"gateway": "gateway-metrics-on"}, {"gateway off": "gateway-metrics-off"}),
    )


def _audits_get_on_off(
    bench: Bench,
    row: tuple[str, str, str, str],
    subject: tuple[str, Mapping[str, str]],
    reference: tuple[str, Mapping[str, str]],
    wanted: float,
) -> list[Row]:
    """`GET /api/v1/audits/{id}` through gateway → audits started with the subject's env, and
    through a second such pair started with the reference's; CPU of all four in the note."""
    (on_key, on_env), (off_key, off_env) = subject, reference
    on, on_path = _audits_behind_gateway(bench, on_key, on_env)
    off, off_path = _audits_behind_gateway(bench, off_key, off_env)
    watched = {key: (f"{key}-gateway", f"{key}-audits") for key in (on_key, off_key)}
    return bench.compare(
        row,
        (
            bench.http(Target(off + off_path), watch=watched[off_key]),
            bench.http(Target(on + on_path), watch=watched[on_key]),
        ),
        wanted,
        cpu=(
            {"gateway": f"{on_key}-gateway", "audits": f"{on_key}-audits"},
            {f"gateway {off_key}": f"{off_key}-gateway", f"audits {off_key}": f"{off_key}-audits"},
        ),
    )


def metrics_audits_get(bench: Bench) -> list[Row]:
    row = (
        "metrics-audits-get",
        "GET /api/v1/audits/{id} via the gateway, metrics on in both",
        "the same with METRICS_ENABLED=false in both",
        "≥0.95",
    )
    return _audits_get_on_off(bench, row, ("metrics-on", {}), ("metrics-off", METRICS_OFF), 0.95)


def tracing(bench: Bench) -> list[Row]:
    port = free_port()
    command = [sys.executable, "-m", "bench.otlpsink", "--port", str(port)]
    sink = bench.stack.server("otlp-sink", command, port, "/stats")
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_TRACES_SAMPLER": "always_on"}
    row = (
        "tracing",
        "GET /api/v1/audits/{id} via the gateway, every request traced to a local receiver",
        "the same untraced (no OTLP endpoint)",
        "≥0.8",
    )
    rows = _audits_get_on_off(bench, row, ("traced", traced), ("untraced", {}), 0.8)
    _, stats = http_get(sink + "/stats")
    if json.loads(stats)["exports"] == 0:
        raise RuntimeError("the traced services exported no spans")
    return rows


ROWS: list[tuple[str, Callable[[Bench], list[Row]], str]] = [
    ("proxy", proxy, "trivial upstream behind the gateway vs direct"),
    ("proxy-auth", proxy_auth, "the proxy row's gateway with access control on vs off"),
    ("nginx", nginx, "trivial upstream behind nginx (reference)"),
    ("audits-get", audits_get, "GET /api/v1/audits/{id} via the gateway vs direct"),
    ("audits-get-auth", audits_get_auth, "GET /api/v1/audits/{id} with access control on vs off"),
    ("audits-post", audits_post, "POST /api/v1/audits vs raw asyncpg INSERT … RETURNING"),
    ("audits-put", audits_put, "PUT /api/v1/audits/{id} vs raw asyncpg UPDATE … RETURNING"),
    ("trail-post", audits_post_trail, "POST with the audit trail vs with it off"),
    ("trail-verify", audits_verify, "verify over 1,000,000 sealed events"),
    ("audits-reads", audits_reads, "pages of 50, first and 500,000 deep, via the gateway"),
    ("audits-batch", audits_batch, "POST /api/v1/audits/batch vs raw asyncpg executemany"),
    ("audits-export", audits_export, "1,000,000-row NDJSON export via the gateway vs a cursor"),
    ("llm", llm_plain, "llm-service plain vs the openai SDK direct to the stand-in"),
    ("llm-stream", llm_stream, "llm-service streaming vs the SDK direct"),
    ("llm-ttfc", llm_ttfc, "added time to first chunk via the gateway at concurrency 1"),
    ("llm-sdk", llm_sdk, "the openai SDK via the gateway vs direct, plain"),
    ("llm-sdk-stream", llm_sdk_stream, "the openai SDK via the gateway vs direct, streaming"),
    ("llm-gateway", llm_gateway, "gateway → llm-service plain vs the SDK direct"),
    ("llm-embeddings", llm_embeddings, "SDK embeddings via the gateway vs direct"),
    ("llm-responses", llm_responses_stream, "SDK Responses stream via the gateway vs direct"),
    ("litellm", litellm, "LiteLLM proxy (reference)"),
    ("memory-idle", memory_idle, "idle RSS of each service"),
    ("memory-streams", memory_streams, "gateway RSS with 1,000 concurrent slow streams"),
    ("cold-start", cold_start, "make run cold start to ready"),
    ("metrics-proxy", metrics_proxy, "gateway to the trivial upstream, metrics on vs off"),
    ("metrics-audits-get", metrics_audits_get, "GET /api/v1/audits/{id}, metrics on vs off"),
    ("tracing", tracing, "GET /api/v1/audits/{id}, traced at 100 % vs untraced"),
    ("trail-retention", audits_retention, "retention purge of 1,000,000 rows while POSTs run"),
]
