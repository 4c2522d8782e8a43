"""`make bench`: every hot path next to its physical limit, in one table.

    python -m bench [--quick] [--only ROW ...] [--list]

Everything it needs (PostgreSQL, the services, the OpenAI stand-in, a trivial upstream)
is started here on 127.0.0.1 and stopped again by PID, on errors and Ctrl-C too.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from fnmatch import fnmatchcase
from pathlib import Path
from types import FrameType

from bench.load import LoadRunner
from bench.report import Row, markdown, summary
from bench.rows import ROWS, Bench, Settings
from bench.stack import Skip, Stack

# Every row fits (the full run takes about 20 minutes); the budget only bounds a run whose
# rows hang or crawl. A row is not started when it could overrun.
BUDGET_S = 2700.0
ROW_RESERVE_S = 45.0


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def selected(key: str, only: list[str]) -> bool:
    return not only or any(fnmatchcase(key, name) for name in only)


def progress(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short run per measurement")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ROW",
        help="run only this row, or the rows a pattern matches (`llm*`); repeat or comma-separate",
    )
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--python-client", action="store_true", help="do not use wrk")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    parser.add_argument(
        "--results",
        # Resolved now: the run changes into its own work dir.
        type=lambda value: Path(value).resolve(),
        default=None,
        metavar="DIR",
        help="where latest.md and latest.json go (default: bench/results)",
    )
    args = parser.parse_args()
    args.only = [name.strip() for names in args.only for name in names.split(",") if name.strip()]
    unknown = [name for name in args.only if not any(selected(key, [name]) for key, _, _ in ROWS)]
    if unknown:
        parser.error(f"unknown row(s): {', '.join(unknown)}; see --list")
    return args


def measure_rows(bench: Bench, only: list[str], started: float) -> list[Row]:
    """Every selected row, in order; a row that breaks or cannot run does not stop the rest."""
    rows: list[Row] = []
    for key, measure, title in ROWS:
        if not selected(key, only):
            continue
        elapsed = time.monotonic() - started
        if elapsed > BUDGET_S - ROW_RESERVE_S:
            rows.append(Row(key=key, path=title, verdict="SKIP", note="time budget spent"))
            continue
        progress(f"{key}: {title} (at {elapsed:.0f} s)")
        try:
            rows += measure(bench)
        except Skip as skip:
            rows.append(Row(key=key, path=title, verdict="SKIP", note=str(skip)))
        except Exception as error:  # a broken row must not hide the others
            rows.append(Row(key=key, path=title, verdict="ERROR", note=str(error)[:300]))
    return rows


def report(rows: list[Row], footer: str, results: Path) -> None:
    """The table on stdout, and in `results` as Markdown and JSON."""
    table = markdown(rows)
    print(table)
    print()
    print(footer)
    results.mkdir(parents=True, exist_ok=True)
    (results / "latest.md").write_text(table + "\n\n" + footer + "\n")
    (results / "latest.json").write_text(json.dumps([asdict(row) for row in rows], indent=2))


def main() -> int:
    args = parse_args()
    if args.list:
        for key, _, title in ROWS:
            print(f"{key:15} {title}")
        return 0
    settings = (
        Settings(runs=1, duration=2.0, warmup=0.5)
        if args.quick
        else Settings(runs=3, duration=4.0, warmup=1.0)
    )
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    # Services read `.env` from their working directory: the bench's own is empty.
    os.chdir(workdir)
    stack = Stack(workdir)
    runner = LoadRunner(stack, python_only=args.python_client)
    progress(f"load generator: {runner.tool_name}; work dir {workdir}")
    try:
        rows = measure_rows(Bench(stack, runner, settings), args.only, started)
    except KeyboardInterrupt:
        progress("interrupted; stopping everything that was started")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
        os.chdir(stack.root)
        if args.keep:
            progress(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    footer = (
        f"{summary(rows)}; load from {runner.tool_name}; "
        f"{settings.runs} run(s) of {settings.duration:.0f} s per median; "
        f"{time.monotonic() - started:.0f} s in all"
    )
    report(rows, footer, args.results or stack.root / "bench" / "results")
    return 1 if any(row.verdict in ("FAIL", "ERROR") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
