"""`make bench` keeps working: two rows end to end, quick, with the Python load client
(CI may have no wrk). Only that they measure is checked, not their ratios: timing
belongs to `make bench` on a quiet machine, not to `make test`."""

import json
import subprocess
import sys
from pathlib import Path

from devstack.processes import repo_root


def test_bench_measures_the_proxy_and_write_rows(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench", "--quick", "--python-client"]
    command += ["--only", "proxy,audits-post", "--results", str(tmp_path)]
    completed = subprocess.run(
        command, cwd=repo_root(), capture_output=True, text=True, timeout=240, check=False
    )

    assert completed.returncode in (0, 1), completed.stderr[-2000:]
    rows = json.loads((tmp_path / "latest.json").read_text())
    assert [row["key"] for row in rows] == ["proxy", "audits-post"]
    for row in rows:
        assert row["verdict"] in ("PASS", "FAIL"), row
        assert row["value"].endswith("/s"), row
        assert row["ref_value"].endswith("/s"), row
        assert float(row["ratio"]) > 0, row
    assert "| proxy |" in completed.stdout
    assert "load from python" in completed.stdout
