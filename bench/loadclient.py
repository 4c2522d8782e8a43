"""A bounded HTTP/1.1 keep-alive load client on raw asyncio sockets: the fallback when
`wrk` is not installed, and the driver of the slow-stream memory test.

Run as its own process (`python -m bench.loadclient …`) so that it never shares a core's
event loop with what it measures; it prints one JSON object with the rate and latencies.
"""

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import uvloop

_MAX_SAMPLES = 2_000_000


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)
    requests: int = 0
    non_2xx: int = 0
    errors: int = 0
    active: int = 0
    peak_active: int = 0

    def record(self, started: float) -> None:
        self.requests += 1
        if len(self.latencies) < _MAX_SAMPLES:
            self.latencies.append(time.perf_counter() - started)

    def summary(self, elapsed: float) -> dict[str, object]:
        """The figures every client reports: count, rate, latency percentiles, errors."""
        return {
            "requests": self.requests,
            "rps": self.requests / elapsed if elapsed else 0.0,
            "p50_ms": to_ms(percentile(self.latencies, 50)),
            "p99_ms": to_ms(percentile(self.latencies, 99)),
            "errors": self.errors,
        }


def build_request(url: str, method: str, body: bytes, headers: list[str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: bench"]
    lines += headers
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return host, port, head + body


async def read_response(reader: asyncio.StreamReader, started: float, tally: Tally) -> bool:
    """Reads one response whole; returns whether the connection may be reused."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    if not 200 <= status < 300:
        tally.non_2xx += 1
    length = -1
    chunked = False
    keep_alive = True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            keep_alive = False
    if chunked:
        first = True
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if first:
                tally.first_bytes.append(time.perf_counter() - started)
                first = False
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                break
            await reader.readexactly(size + 2)
    elif length >= 0:
        await reader.readexactly(length)
        tally.first_bytes.append(time.perf_counter() - started)
    else:
        await reader.read()
        keep_alive = False
    return keep_alive


async def connection(
    host: str, port: int, request: bytes, deadline: float, once: bool, tally: Tally
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while time.perf_counter() < deadline:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            started = time.perf_counter()
            tally.active += 1
            tally.peak_active = max(tally.peak_active, tally.active)
            try:
                writer.write(request)
                reusable = await asyncio.wait_for(
                    read_response(reader, started, tally), deadline - started + 30
                )
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                tally.errors += 1
                writer.close()
                writer = None
                await asyncio.sleep(0.01)
                continue
            finally:
                tally.active -= 1
            tally.record(started)
            if not reusable:
                writer.close()
                writer = None
            if once:
                return
    finally:
        if writer is not None:
            writer.close()


def percentile(samples: list[float], pct: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def to_ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = args.body.encode() if args.body is not None else b""
    host, port, request = build_request(args.url, args.method, body, args.header)
    tally = Tally()
    started = time.perf_counter()
    deadline = started + args.duration
    tasks = [
        asyncio.create_task(connection(host, port, request, deadline, args.once, tally))
        for _ in range(args.concurrency)
    ]
    await asyncio.wait(tasks, timeout=args.duration + 60)
    for task in tasks:
        task.cancel()
    elapsed = time.perf_counter() - started
    return {
        "tool": "python",
        **tally.summary(elapsed),
        "duration_s": round(elapsed, 3),
        "max_ms": to_ms(max(tally.latencies, default=None)),
        "first_byte_p50_ms": to_ms(percentile(tally.first_bytes, 50)),
        "non_2xx": tally.non_2xx,
        "peak_active": tally.peak_active,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--once", action="store_true", help="one request per connection")
    args = parser.parse_args()
    result = uvloop.run(run(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
