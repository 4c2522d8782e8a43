"""Reads a whole export as its own process and prints what it got as JSON: either an HTTP
export (`http URL`: rows = lines, the last one checked for an `error`) or the raw database
reference (`cursor DSN SQL`: a server-side asyncpg cursor in one transaction, no decoding
beyond asyncpg's own)."""

import argparse
import http.client
import json
import sys
import time
import urllib.parse

import asyncpg
import uvloop

_READ_BYTES = 1 << 20


def read_http(url: str) -> dict[str, object]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    started = time.perf_counter()
    connection.request("GET", f"{parts.path}?{parts.query}")
    response = connection.getresponse()
    rows = size = 0
    tail = b""
    while chunk := response.read(_READ_BYTES):
        rows += chunk.count(b"\n")
        size += len(chunk)
        tail = (tail + chunk)[-4096:]
    seconds = time.perf_counter() - started
    connection.close()
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    failed = last.startswith(b'{"error"')
    return {"status": response.status, "rows": rows, "bytes": size, "seconds": seconds,
            "error": last.decode(errors="replace") if failed else None}  # fmt: skip


async def read_cursor(dsn: str, sql: str, prefetch: int) -> dict[str, object]:
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        rows = 0
        async with connection.transaction():
            async for _ in connection.cursor(sql, prefetch=prefetch):
                rows += 1
        return {"rows": rows, "seconds": time.perf_counter() - started}
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("http").add_argument("url")
    cursor = sub.add_parser("cursor")
    cursor.add_argument("dsn")
    cursor.add_argument("sql")
    cursor.add_argument("--prefetch", type=int, default=1000)
    args = parser.parse_args()
    if args.mode == "http":
        result = read_http(args.url)
    else:
        result = uvloop.run(read_cursor(args.dsn, args.sql, args.prefetch))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
