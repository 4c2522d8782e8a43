"""Runs the retention purge once, as its own process, exactly as the audits service's
leader-elected job does (`purge_expired_records`, batches of `PURGE_BATCH`), logged in
as the service's role; prints the rows purged and the seconds taken as JSON."""

import argparse
import json
import time

import uvloop

from audits_service.config import Settings
from audits_service.database import create_engine
from audits_service.trail.retention import purge_expired_records


async def run(dsn: str, days: int) -> dict[str, object]:
    engine = create_engine(Settings(database_url=dsn))
    try:
        started = time.perf_counter()
        purged = await purge_expired_records(engine, days)
        return {"purged": purged, "seconds": time.perf_counter() - started}
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--days", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args.dsn, args.days))))


if __name__ == "__main__":
    main()
