"""(c) Routing quality: heterogeneous backends, and a prefix-sharing workload.

Heterogeneous: four fake backends serving 4 requests at a time each (the rest queue):
two normal (20 ms to first token, 2 ms per token), one 3x slower, one that stalls for
0.6 s every 3 s. Streamed requests of 20 tokens at a fixed rate; p50/p95/p99 of end-to-end
latency and time to first token per strategy (ours) and per policy (peers).

Prefix: four fake backends with a prefix cache of 8 entries each (a hit makes the first
token 10x cheaper); 32 system prompts shared by the requests. Cache hit rate (from the
backends' /stats) and TTFT per strategy / policy.

    python benchmarks/router/bench_quality.py [--seconds 12] [--rate 80] [--only hetero|prefix]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    load,
    loadavg,
    processes,
    run_async,
    start_fakes,
    start_router,
    stop,
    write_json,
)

OURS = [
    "round_robin",
    "random",
    "least_loaded",
    "power_of_two",
    "prefix_affinity",
    "mesh",
    "hybrid",
    "predictive",
]
NO_HEDGE = ["--hedge-fraction", "0"]
PEERS = {
    "sglang": ["round_robin", "power_of_two", "cache_aware"],
    "vllm": ["round_robin", "power_of_two", "cache_aware"],
}

NORMAL = {"ttft_s": 0.02, "per_token_s": 0.002, "max_concurrency": 4}
HETERO = [
    NORMAL,
    NORMAL,
    {**NORMAL, "slowdown": 3.0},
    {**NORMAL, "stall_every_s": 3.0, "stall_for_s": 0.6},
]
PREFIX = [{"ttft_s": 0.03, "per_token_s": 0.001, "prefix_chars": 64, "prefix_cache_size": 8}] * 4


def runs() -> list[tuple[str, str, list[str]]]:
    out = [("ours", s, []) for s in OURS]
    out += [("ours", "hybrid (no hedging)", NO_HEDGE)]
    out += [(k, p, []) for k, ps in PEERS.items() for p in ps]
    return out


def stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url + "/stats", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def hetero(seconds: float, rate: float, subset: set[str]) -> dict[str, object]:
    table = {}
    rng = random.Random(0)
    prompts = [f"user {rng.randrange(10**9)} asks something" for _ in range(100_000)]

    def body(i: int) -> dict[str, object]:
        return {"model": "fake", "prompt": prompts[i], "max_tokens": 20}

    print(f"\nheterogeneous: {rate:g} req/s for {seconds:g}s, streamed, 20 tokens")
    with processes() as procs:
        urls = start_fakes(procs, HETERO)
        for kind, name, extra in runs():
            if subset and f"{kind}:{name}" not in subset:
                continue
            policy = name.split(" ")[0]
            url = start_router(procs, kind, urls, policy, extra)
            run_async(load([url], rate, int(rate * 2), body, stream=True))  # warm-up
            r = run_async(
                load([url], rate, int(rate * seconds), body, max_s=seconds * 4, stream=True)
            )
            stop(procs, procs[-1])
            row = {
                "p50_ms": r.pct(50) * 1e3,
                "p95_ms": r.pct(95) * 1e3,
                "p99_ms": r.pct(99) * 1e3,
                "ttft_p50_ms": r.pct(50, "ttft") * 1e3,
                "ttft_p99_ms": r.pct(99, "ttft") * 1e3,
                "errors": r.errors,
                "load": loadavg(),
            }
            table[f"{kind}:{name}"] = row
            print(
                f"  {kind:7s} {name:28s} p50 {row['p50_ms']:7.1f}  p95 {row['p95_ms']:7.1f}  "
                f"p99 {row['p99_ms']:7.1f}  ttft p50 {row['ttft_p50_ms']:6.1f} "
                f"p99 {row['ttft_p99_ms']:7.1f}  err {r.errors}  (load {row['load']})",
                flush=True,
            )
    return table


def prefix(seconds: float, rate: float) -> dict[str, object]:
    table = {}
    rng = random.Random(1)
    systems = [f"system prompt {k:02d}: " + "you are a helpful assistant. " * 4 for k in range(32)]
    prompts = [rng.choice(systems) + f"question {i}" for i in range(100_000)]

    def body(i: int) -> dict[str, object]:
        return {"model": "fake", "prompt": prompts[i], "max_tokens": 10}

    print(f"\nprefix sharing: {rate:g} req/s for {seconds:g}s, 32 shared system prompts")
    selected = [
        ("ours", "round_robin", []),
        ("ours", "prefix_affinity", []),
        ("ours", "hybrid", []),
        ("sglang", "cache_aware", []),
        ("sglang", "round_robin", []),
        ("vllm", "cache_aware", []),
    ]
    for kind, name, extra in selected:
        with processes() as procs:  # fresh backends: empty caches for every router
            urls = start_fakes(procs, PREFIX)
            url = start_router(procs, kind, urls, name, extra)
            r = run_async(
                load([url], rate, int(rate * seconds), body, max_s=seconds * 4, stream=True)
            )
            st = [stats(u) for u in urls]
        hits = sum(s["prefix_hits"] for s in st)
        lookups = sum(s["prefix_lookups"] for s in st)
        row = {
            "hit_rate": hits / max(1, lookups),
            "ttft_p50_ms": r.pct(50, "ttft") * 1e3,
            "ttft_p99_ms": r.pct(99, "ttft") * 1e3,
            "p99_ms": r.pct(99) * 1e3,
            "per_backend": [s["requests"] for s in st],
            "errors": r.errors,
            "load": loadavg(),
        }
        table[f"{kind}:{name}"] = row
        print(
            f"  {kind:7s} {name:16s} hit rate {row['hit_rate']:.2f}  ttft p50 "
            f"{row['ttft_p50_ms']:6.1f} p99 {row['ttft_p99_ms']:6.1f}  e2e p99 "
            f"{row['p99_ms']:6.1f}  per backend {row['per_backend']}  (load {row['load']})",
            flush=True,
        )
    return table


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--rate", type=float, default=80.0)
    ap.add_argument("--prefix-rate", type=float, default=100.0)
    ap.add_argument("--only", choices=["hetero", "prefix"])
    ap.add_argument("--tag", default="")
    ap.add_argument("--subset", default="", help="comma-separated kind:name runs only")
    args = ap.parse_args()
    out: dict[str, object] = {"load_before": loadavg()}
    if args.only in (None, "hetero"):
        out["heterogeneous"] = hetero(
            args.seconds, args.rate, set(filter(None, args.subset.split(",")))
        )
    if args.only in (None, "prefix"):
        out["prefix"] = prefix(args.seconds, args.prefix_rate)
    out["load_after"] = loadavg()
    print(f"results: {write_json(f'quality{args.tag}.json', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
