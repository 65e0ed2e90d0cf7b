"""Print the Markdown results table of docs/SIMULATOR.md from comparison CSVs.

    .venv/bin/python benchmarks/sim/results_table.py results/comparison.csv [more.csv ...]

Later files replace rows of earlier ones with the same strategy and arm (to merge re-runs);
the arms of an A/B run are printed as ``strategy [arm]``.
"""

from __future__ import annotations

import csv
import sys

COLUMNS = (
    ("strategy", "strategy", "{}"),
    ("latency_p50_s", "p50 s", "{:.2f}"),
    ("latency_p99_s", "p99 s", "{:.1f}"),
    ("ttft_p99_s", "TTFT p99 s", "{:.2f}"),
    ("slo_attainment", "SLO met", "{:.3f}"),
    ("goodput_rps", "goodput/s", "{:.0f}"),
    ("dropped", "dropped", "{:.0f}"),
    ("gpu_util_mean", "util mean", "{:.2f}"),
    ("gpu_util_std", "util std", "{:.2f}"),
    ("prefix_cache_hit_rate", "prefix hits", "{:.2f}"),
    ("gpu_hours", "GPU-h", "{:.0f}"),
    ("cost_per_1k_tokens_usd", "$ / 1k tok", "{:.5f}"),
)


def main(paths: list[str]) -> None:
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for p in paths:
        with open(p, newline="") as fh:
            for r in csv.DictReader(fh):
                arm = r.get("arm") or "all"
                if arm != "all":
                    r = {**r, "strategy": f"{r['strategy']} [{arm}]"}
                rows[(r["strategy"], arm)] = r
    print("| " + " | ".join(t for _, t, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows.values():
        cells = []
        for key, _, fmt in COLUMNS:
            v = r.get(key, "")
            cells.append(
                fmt.format(float(v)) if v not in ("", None) and key != "strategy" else v or "-"
            )
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
