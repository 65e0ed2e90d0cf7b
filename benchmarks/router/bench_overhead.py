"""(a) Latency a router adds at fixed request rates; (b) the highest rate it sustains.

Two fake backends answer at once (no model time), so what is measured is the proxy's own
cost plus the extra hop. (a) For each rate, the load generator calls the backends directly
(client-side round robin), then each router, in the same repetition; added latency =
router percentile - direct percentile; the median over repetitions is reported.
(b) Rates go up until a router's p99 exceeds twice its p99 at the lowest rate, it drops
below 95% of the offered rate, or a request fails.

    python benchmarks/router/bench_overhead.py [--reps 3] [--seconds 4] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    load,
    loadavg,
    processes,
    run_async,
    start_fakes,
    start_router,
    write_json,
)

ROUTERS = [
    ("ours", "round_robin"),
    ("ours", "power_of_two"),
    ("sglang", "round_robin"),
    ("vllm", "round_robin"),
]


def body(i: int) -> dict[str, object]:
    return {"model": "fake", "prompt": f"request {i}", "max_tokens": 1}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rates", default="100,500,1000")
    ap.add_argument("--sustain-rates", default="250,500,1000,1500,2000,3000")
    ap.add_argument("--skip-sustain", action="store_true")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    print(f"load average before: {loadavg()}", flush=True)
    out: dict[str, object] = {"load_before": loadavg()}
    with processes() as procs:
        urls = start_fakes(procs, [{}, {}])
        routers = {f"{k}:{p}": start_router(procs, k, urls, p) for k, p in ROUTERS}
        # warm every path once
        for target in [urls, *([u] for u in routers.values())]:
            run_async(load(target, 200, 200, body))
        added: dict[str, dict[float, list[tuple[float, float]]]] = {n: {} for n in routers}
        direct: dict[float, list[tuple[float, float]]] = {}
        for rep in range(args.reps):
            for rate in rates:
                n = int(rate * args.seconds)
                d = run_async(load(urls, rate, n, body))
                direct.setdefault(rate, []).append((d.pct(50), d.pct(99)))
                for name, url in routers.items():
                    r = run_async(load([url], rate, n, body))
                    if r.errors:
                        print(f"  {name} @ {rate:g}: {r.errors} errors", flush=True)
                    added[name].setdefault(rate, []).append(
                        (r.pct(50) - d.pct(50), r.pct(99) - d.pct(99))
                    )
                print(f"rep {rep} rate {rate:g} done (load {loadavg()})", flush=True)
        print("\n(a) added latency, median of", args.reps, "reps (ms): p50 / p99")
        table_a = {}
        for rate in rates:
            dp50 = statistics.median(x[0] for x in direct[rate]) * 1e3
            dp99 = statistics.median(x[1] for x in direct[rate]) * 1e3
            row = {"direct_p50_ms": dp50, "direct_p99_ms": dp99}
            print(f"  {rate:6g} req/s  direct p50 {dp50:.2f} p99 {dp99:.2f}")
            for name in routers:
                a50 = statistics.median(x[0] for x in added[name][rate]) * 1e3
                a99 = statistics.median(x[1] for x in added[name][rate]) * 1e3
                row[name] = {"added_p50_ms": a50, "added_p99_ms": a99}
                print(f"      {name:22s} +{a50:.2f} / +{a99:.2f}")
            table_a[str(rate)] = row
        out["added_latency"] = table_a
        if not args.skip_sustain:
            srates = [float(r) for r in args.sustain_rates.split(",")]
            print("\n(b) highest sustained rate (p99 < 2x its lowest-rate p99, >= 95% achieved)")
            table_b = {}
            for name, url in [("direct", None), *routers.items()]:
                targets = urls if url is None else [url]
                base = None
                best = 0.0
                steps = []
                for rate in srates:
                    r = run_async(load(targets, rate, int(rate * 3), body, max_s=20))
                    p99 = r.pct(99)
                    steps.append((rate, r.achieved_rps, p99 * 1e3, r.errors))
                    if base is None:
                        base = p99
                    ok = r.errors == 0 and r.achieved_rps >= 0.95 * rate and p99 < 2 * base
                    if not ok:
                        break
                    best = rate
                table_b[name] = {"max_rps": best, "steps": steps}
                print(f"  {name:22s} {best:g} req/s  steps {steps}", flush=True)
            out["sustained"] = table_b
    out["load_after"] = loadavg()
    print(f"results: {write_json('overhead.json', out)}  load average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
