"""Smoke test of benchmarks/security/bench_mtls.py: one small round prints the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_mtls_prints_a_row_per_call_with_a_ratio():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/security/bench_mtls.py"), "--runs", "1",
         "--calls", "50", "--connects", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == [
        "unary Stats",
        "heartbeat",
        "connect + first call",
    ]
    for row in rows:
        assert float(row.split("|")[4]) > 0
