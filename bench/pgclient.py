"""The audits write reference: raw asyncpg running one single-row `INSERT … RETURNING` per
call from a pool (or, with `--rows N`, one `executemany` of N rows), at a fixed concurrency,
as its own process; prints the rate of calls as JSON.

Each call is its own implicit transaction, committed durably (the server's default
`synchronous_commit=on`, fsync on), exactly what the service must do per POST.
"""

import argparse
import asyncio
import json
import sys
import time
import uuid

import asyncpg
import uvloop

from bench.loadclient import Tally


async def worker(pool: asyncpg.Pool, sql: str, rows: int, deadline: float, tally: Tally) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            async with pool.acquire() as connection:
                if rows == 1:
                    await connection.fetchrow(sql, str(uuid.uuid4()))
                else:
                    await connection.executemany(sql, [(str(uuid.uuid4()),) for _ in range(rows)])
        except (asyncpg.PostgresError, OSError):
            tally.errors += 1
            continue
        tally.record(started)


async def run(args: argparse.Namespace) -> dict[str, object]:
    pool = await asyncpg.create_pool(args.dsn, min_size=args.pool, max_size=args.pool)
    tally = Tally()
    started = time.perf_counter()
    deadline = started + args.duration
    try:
        await asyncio.gather(
            *(worker(pool, args.sql, args.rows, deadline, tally) for _ in range(args.concurrency))
        )
    finally:
        await pool.close()
    elapsed = time.perf_counter() - started
    return {
        **tally.summary(elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--sql", required=True, help="one statement taking $1, a UUID string")
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rows", type=int, default=1, help="rows per call (executemany)")
    args = parser.parse_args()
    sys.stdout.write(json.dumps(uvloop.run(run(args))) + "\n")


if __name__ == "__main__":
    main()
