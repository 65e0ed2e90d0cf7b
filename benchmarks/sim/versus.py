"""Old code against new code on one case, in one invocation, alternating runs.

Run from the repository root with a copy of the old code somewhere (a second worktree or
``git archive``)::

    mkdir -p /tmp/sim-old && git archive <old-commit> | tar -x -C /tmp/sim-old
    nice -n 19 .venv/bin/python benchmarks/sim/versus.py --old /tmp/sim-old --rounds 3

Each round runs ``sim run`` on the case with the old tree first on ``PYTHONPATH``, then
with this tree (the order flips every round), and records the wall time and the CPU
seconds of the process tree. It prints the medians and the new/old ratios, the load
average before and after, and writes ``benchmarks/sim/out/versus-<case>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "sim" / "out"
CASES: dict[str, tuple[str, list[str]]] = {
    "small-all": ("small", ["-j", "2"]),
    "small-one": ("small", ["-s", "mesh", "-j", "1"]),
}
_CLI = "from infermesh.cli.sim import sim_app; sim_app()"


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_once(tree: Path, case: str, out: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one ``sim run`` with ``tree`` first on the path."""
    scenario, args = CASES[case]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cfg = OUT / f"{scenario}.yaml"
    subprocess.run(
        [sys.executable, "-c", _CLI, "generate", "--example-type", scenario, "-o", str(cfg)],
        check=True,
        env=env,
        cwd=tree,
        stdout=subprocess.DEVNULL,
    )
    cmd = [sys.executable, "-c", _CLI, "run", "-c", str(cfg), "-o", str(out)]
    cmd += ["--format", "csv", "--no-progress", *args]
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    # cwd too: ``python -c`` puts the working directory ahead of PYTHONPATH
    subprocess.run(cmd, check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, _children_cpu() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, type=Path, help="root of a copy of the old code")
    ap.add_argument("--new", type=Path, default=ROOT, help="root of the new code (this tree)")
    ap.add_argument("--case", default="small-all", choices=sorted(CASES))
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    trees = {"old": a.old.resolve(), "new": a.new.resolve()}
    runs: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    load0 = os.getloadavg()[0]
    for k in range(a.rounds):
        order = ["old", "new"] if k % 2 == 0 else ["new", "old"]
        for name in order:
            wall, cpu = run_once(trees[name], a.case, OUT / f"versus-{a.case}-{name}")
            runs[name].append((wall, cpu))
            print(f"round {k + 1} {name}: wall {wall:.1f} s, cpu {cpu:.1f} s", flush=True)
    load1 = os.getloadavg()[0]
    med = {
        n: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
        for n, r in runs.items()
    }
    summary = {
        "case": a.case,
        "rounds": a.rounds,
        "load_before": round(load0, 1),
        "load_after": round(load1, 1),
        "median_wall_s": {n: round(m[0], 1) for n, m in med.items()},
        "median_cpu_s": {n: round(m[1], 1) for n, m in med.items()},
        "wall_ratio_new_over_old": round(med["new"][0] / med["old"][0], 3),
        "cpu_ratio_new_over_old": round(med["new"][1] / med["old"][1], 3),
        "runs": runs,
    }
    (OUT / f"versus-{a.case}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
