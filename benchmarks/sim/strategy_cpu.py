"""CPU seconds per strategy on one scenario, old code against new, alternating.

    mkdir -p /tmp/sim-old && git archive <old-commit> | tar -x -C /tmp/sim-old
    nice -n 19 .venv/bin/python benchmarks/sim/strategy_cpu.py --old /tmp/sim-old

For each strategy, one fresh process per tree (old first for even strategies, new first
for odd ones) generates the workload and runs the engine; the process reports the CPU
seconds (``time.process_time``) of ``simulate`` alone, which the machine's load moves far
less than wall time. Prints a Markdown table with the new/old ratio per strategy and in
total, and writes ``benchmarks/sim/out/strategy-cpu-<scenario>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "sim" / "out"
_PROBE = """
import json, sys, time
from sim.engine import simulate
from sim.config import parse
from sim.scenarios import example
from sim.workload import generate
cfg = parse(example(sys.argv[1]))
wl = generate(cfg)
t0 = time.process_time()
res = simulate(cfg, sys.argv[2], wl)
print(json.dumps({"cpu_s": time.process_time() - t0, "events": res.events, "requests": wl.n}))
"""


def probe(tree: Path, scenario: str, strategy: str) -> dict[str, float]:
    """CPU seconds and event count of one run with ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, scenario, strategy],
        check=True,
        env=env,
        cwd=tree,  # ``python -c`` puts the working directory ahead of PYTHONPATH
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    from infermesh.serve.strategies.registry import DEFAULT_SET

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, type=Path, help="root of a copy of the old code")
    ap.add_argument("--new", type=Path, default=ROOT, help="root of the new code (this tree)")
    ap.add_argument("--scenario", default="small")
    ap.add_argument("--strategy", action="append", help="repeat; default: all twelve")
    a = ap.parse_args()
    trees = {"old": a.old.resolve(), "new": a.new.resolve()}
    names = a.strategy or list(DEFAULT_SET)
    load0 = os.getloadavg()[0]
    rows = {}
    print("| strategy | old CPU s | new CPU s | new/old | events old | events new |")
    print("|---|---|---|---|---|---|")
    for k, s in enumerate(names):
        order = ["old", "new"] if k % 2 == 0 else ["new", "old"]
        r = {t: probe(trees[t], a.scenario, s) for t in order}
        rows[s] = r
        print(
            f"| {s} | {r['old']['cpu_s']:.2f} | {r['new']['cpu_s']:.2f} | "
            f"{r['new']['cpu_s'] / r['old']['cpu_s']:.2f} | {r['old']['events']:,} | "
            f"{r['new']['events']:,} |",
            flush=True,
        )
    tot = {t: sum(r[t]["cpu_s"] for r in rows.values()) for t in ("old", "new")}
    print(f"| total | {tot['old']:.1f} | {tot['new']:.1f} | {tot['new'] / tot['old']:.2f} | | |")
    load1 = os.getloadavg()[0]
    print(f"load average {load0:.1f} before, {load1:.1f} after")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"strategy-cpu-{a.scenario}.json").write_text(
        json.dumps({"load": [load0, load1], "total": tot, "runs": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
