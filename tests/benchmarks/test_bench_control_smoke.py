"""Smoke tests of ``benchmarks/control/bench_heartbeats.py``, ``bench_jobs_ls.py`` and
``bench_plan_pass.py``.

Small sizes (50 agents for 3 s, 500 jobs) so the scripts keep working; the figures they
print are checked for sense, not for speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "control"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_heartbeat_bench_measures_round_trips_and_detection(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    argv = [sys.executable, str(BENCH / "bench_heartbeats.py"), "--agents", "50", "--runs", "1"]
    argv += ["--duration", "3", "--warmup", "1", "--suspect-after", "1", "--dead-after", "2"]
    proc = subprocess.run(
        [*argv, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out.read_text())
    assert row["agents"] == 50 and row["server"] == "coordinator"
    assert row["sent_beats"] >= 0.8 * row["expected_beats"], row  # 50 agents x 3 s
    assert row["beats"] >= 0.8 * row["expected_beats"] / 10, row  # every 10th is a probe
    assert 0 < row["rtt_p50_ms"] <= row["rtt_p99_ms"] < 3000
    assert row["coord_cpu_pct"] > 0 and row["us_per_beat"] > 0
    # silent: SUSPECT after ~1 s of silence, DEAD after ~2 s; closed: SUSPECT at once
    assert 0.9 < row["silent_suspect_s"] < row["silent_dead_s"] < 6, row
    assert 0 <= row["closed_suspect_s"] < 1.0 < row["closed_dead_s"] < 6, row
    assert not row["errors"], row["errors"]
    assert "| coordinator | 50 |" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_jobs_ls_bench_lists_every_record() -> None:
    argv = [sys.executable, str(BENCH / "bench_jobs_ls.py"), "--jobs", "500", "--small", "50"]
    proc = subprocess.run(
        [*argv, "--runs", "2"], cwd=REPO, capture_output=True, text=True, timeout=140, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {
        cells[0]: cells
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| query")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows["limit 50"][1] == "50"
    assert rows["status RUNNING"][1] == "5"  # 1 job in 100 is RUNNING
    assert rows["all"][1] == "500" and rows["all"][4] == "50"
    assert all(math.isfinite(float(cells[2])) for cells in rows.values())


def test_plan_pass_bench_plans_every_job_once_and_hands_the_loop_back() -> None:
    argv = [sys.executable, str(BENCH / "bench_plan_pass.py"), "--nodes", "160", "--runs", "1"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| 160")]
    assert [r[2].strip() for r in rows] == ["peer: none", "20 jobs"]
    for row in rows:
        assert row[1].strip() == "20" and row[3].strip().endswith("(20)")  # every job planned
