"""Smoke test of ``benchmarks/launch/bench_launch.py --quick`` (one run of metric (a)).

Runs the benchmark with the current interpreter (so its ``torchrun`` and ``infermesh-run``
console scripts are used) and checks that the markdown table has a row for (a).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "launch" / "bench_launch.py"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_prints_row_for_a() -> None:
    """``--quick`` exits 0 and prints a table row for (a) with a ratio."""
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--timeout", "60"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| (a) ")]
    assert len(rows) == 1, proc.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == 5, rows[0]
    float(cells[3])  # the ratio is a number, i.e. both launchers produced a value
