"""Smoke runs of benchmarks/signal (tiny sizes): they run and report what the README says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "signal"


def _run(script: str, *args: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, float] = json.loads(proc.stdout)
    return result


@pytest.mark.slow
def test_ingest_benchmark_reports_rates_and_view_cost() -> None:
    r = _run("bench_ingest.py", "--nodes", "4", "--seconds", "2", "--runs", "1")
    assert r["series_per_node"] > 8 * 20  # 8 fake GPUs report ~35 signals each
    assert r["samples_per_run"] >= 4 * 2 * (r["series_per_node"] - 1)
    assert r["median_samples_per_s"] > 0 and r["peer_median_samples_per_s"] > 0
    assert r["median_view_us"] > 0


@pytest.mark.slow
def test_collection_benchmark_reports_cpu_percent() -> None:
    r = _run("bench_collect.py", "--seconds", "1", "--hz", "4", "--runs", "1")
    assert r["samples_per_round"] > 8 * 20  # 8 fake GPUs report ~35 signals each
    assert 0 < r["median_cpu_percent"] < 50
