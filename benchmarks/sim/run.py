"""Simulator benchmarks: wall time, events/s and peak memory of the example scenarios.

Run from the repository root (heavy: use ``nice``)::

    nice -n 19 .venv/bin/python benchmarks/sim/run.py small-one small-all
    nice -n 19 .venv/bin/python benchmarks/sim/run.py large-one xlarge-one

Each case runs ``infermesh sim run`` in a fresh process tree, then prints one Markdown
table row (the README table is made of these rows) and writes
``benchmarks/sim/out/<case>.json``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "sim" / "out"
# the ``infermesh sim`` command group itself (needs no other command group)
CLI = [sys.executable, "-c", "from infermesh.cli.sim import sim_app; sim_app()"]

CASES: dict[str, tuple[str, list[str]]] = {
    "small-one": ("small", ["-s", "mesh", "-j", "1"]),
    "small-all": ("small", ["-j", "2"]),
    "medium-one": ("medium", ["-s", "mesh", "-j", "1"]),
    "large-one": ("large", ["-s", "mesh", "-j", "1"]),
    "xlarge-one": ("xlarge", ["-s", "mesh", "-j", "1"]),
}


def run_case(name: str) -> dict[str, object]:
    """Run one case and return its measurements."""
    scenario, args = CASES[name]
    cfg = OUT / f"{scenario}.yaml"
    res = OUT / name
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run([*CLI, "generate", "--example-type", scenario, "-o", str(cfg)], check=True)
    t0 = time.perf_counter()
    subprocess.run(
        [
            *CLI,
            "run",
            "-c",
            str(cfg),
            "-o",
            str(res),
            "--format",
            "csv",
            "--no-progress",
            *args,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    runtime = json.loads((res / "runtime.json").read_text())["strategies"]
    events = sum(r["events"] for r in runtime.values())
    requests = sum(r["requests"] for r in runtime.values())
    row = {
        "case": name,
        "scenario": scenario,
        "strategies": len(runtime),
        "wall_s": round(wall, 1),
        "events": events,
        "events_per_s": round(events / wall),
        "requests_per_s": round(requests / wall),
        "slowest_strategy_s": max(r["wall_s"] for r in runtime.values()),
        "peak_rss_mb_so_far": round(peak_mb),
    }
    (OUT / f"{name}.json").write_text(json.dumps({"summary": row, "runtime": runtime}, indent=2))
    return row


def main(argv: list[str]) -> None:
    names = argv or ["small-one", "small-all"]
    for n in names:
        if n not in CASES:
            raise SystemExit(f"unknown case {n!r}; known: {', '.join(CASES)}")
    print("| case | strategies | wall s | events | events/s | requests/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        r = run_case(n)
        print(
            f"| {r['case']} | {r['strategies']} | {r['wall_s']} | {r['events']:,} | "
            f"{r['events_per_s']:,} | {r['requests_per_s']:,} | {r['peak_rss_mb_so_far']} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
