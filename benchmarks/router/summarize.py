"""Median tables (markdown) from the JSON files the router benchmarks wrote in out/.

python benchmarks/router/summarize.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def med(values: list[float]) -> float:
    return statistics.median(values)


def quality() -> None:
    runs = [json.loads(p.read_text()) for p in sorted(OUT.glob("quality_r*.json"))]
    if not runs:
        return
    print(f"\n(c) heterogeneous backends, median of {len(runs)} runs (ms)\n")
    print("| router | strategy / policy | p50 | p95 | p99 | TTFT p50 | TTFT p99 | p99 vs RR |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    names = list(runs[0]["heterogeneous"])
    rows = {}
    for n in names:
        vals = [r["heterogeneous"][n] for r in runs if n in r.get("heterogeneous", {})]
        rows[n] = {k: med([v[k] for v in vals]) for k in vals[0] if k.endswith("_ms")}
    rr = {k.split(":")[0]: v["p99_ms"] for k, v in rows.items() if k.endswith(":round_robin")}
    for n, v in rows.items():
        kind, name = n.split(":", 1)
        ratio = rr["ours"] / v["p99_ms"]
        print(
            f"| {kind} | {name} | {v['p50_ms']:.0f} | {v['p95_ms']:.0f} | {v['p99_ms']:.0f} | "
            f"{v['ttft_p50_ms']:.0f} | {v['ttft_p99_ms']:.0f} | {ratio:.2f}x |"
        )
    print(f"\n(c) prefix sharing, median of {len(runs)} runs\n")
    print(
        "| router | strategy / policy | cache hit rate | TTFT p50 ms | TTFT p99 ms | e2e p99 ms |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for n in runs[0]["prefix"]:
        vals = [r["prefix"][n] for r in runs]
        kind, name = n.split(":", 1)
        print(
            f"| {kind} | {name} | {med([v['hit_rate'] for v in vals]):.2f} | "
            f"{med([v['ttft_p50_ms'] for v in vals]):.0f} | "
            f"{med([v['ttft_p99_ms'] for v in vals]):.0f} | "
            f"{med([v['p99_ms'] for v in vals]):.0f} |"
        )
    loads = [r["load_before"] for r in runs] + [r["load_after"] for r in runs]
    print(f"\nload averages (1/5/15 min) before/after runs: {'; '.join(loads)}")


def overhead() -> None:
    p = OUT / "overhead.json"
    if not p.exists():
        return
    d = json.loads(p.read_text())
    print("\n(a) added latency over calling the backends directly (ms, median of reps)\n")
    print(
        "| rate req/s | direct p50 / p99 | "
        + " | ".join(k for k in next(iter(d["added_latency"].values())) if ":" in k)
        + " |"
    )
    routers = [k for k in next(iter(d["added_latency"].values())) if ":" in k]
    print("|---:|---:|" + "---:|" * len(routers))
    for rate, row in d["added_latency"].items():
        cells = [f"+{row[r]['added_p50_ms']:.2f} / +{row[r]['added_p99_ms']:.2f}" for r in routers]
        print(
            f"| {float(rate):g} | {row['direct_p50_ms']:.2f} / {row['direct_p99_ms']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    if "sustained" in d:
        print("\n(b) highest sustained rate (p99 < 2x its p99 at 250 req/s, >= 95% achieved)\n")
        print("| target | max req/s | steps (offered, achieved, p99 ms, errors) |")
        print("|---|---:|---|")
        for name, v in d["sustained"].items():
            steps = "; ".join(f"{a:g}, {b:.0f}, {c:.1f}, {e}" for a, b, c, e in v["steps"])
            print(f"| {name} | {v['max_rps']:g} | {steps} |")
    print(f"\nload averages before/after: {d['load_before']}; {d['load_after']}")


if __name__ == "__main__":
    overhead()
    quality()
    sys.exit(0)
