"""Coordinator ingest rate: samples per second folded into a SignalTable on one core.

Question: can one coordinator core keep up with a cell's telemetry? Each simulated node
sends what a real agent with 8 GPUs sends each second (the fake NVML collector's samples
plus host samples), cut into batches of ``--batch`` samples as four columns (the gRPC
message's shape). Only ``SignalTable.ingest`` is timed. Target: >= 200k samples/s.

    python benchmarks/signal/bench_ingest.py [--nodes 64] [--seconds 20] [--batch 20] [--runs 5]

The peer run, interleaved in the same invocation, sends the same samples in batches of
``--peer-batch`` (default 200). The cost of one ``view()`` of a node (all its series with
ages, plus health) is measured on the filled table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from infermesh.signal import SignalTable, create_collector


def make_batches(
    nodes: int, seconds: int, batch: int
) -> list[tuple[str, list, list, list, list, float]]:
    host = create_collector("host")
    nvml = create_collector("fake_nvml", gpus=8)
    try:
        per_second = []
        for t in range(seconds):
            samples = nvml.collect(1000.0 + t) + host.collect(1000.0 + t)
            per_second.append(samples)
    finally:
        nvml.close()
        host.close()
    out = []
    for t, samples in enumerate(per_second):
        for n in range(nodes):
            for i in range(0, len(samples), batch):
                chunk = samples[i : i + batch]
                out.append(
                    (
                        f"node-{n:04d}",
                        [s.name for s in chunk],
                        [s.value for s in chunk],
                        [s.ts for s in chunk],
                        [s.labels for s in chunk],
                        1000.5 + t,
                    )
                )
    return out


def run_once(batches: list, table: SignalTable | None = None) -> tuple[float, int]:
    table = table if table is not None else SignalTable()
    ingest = table.ingest
    n = 0
    t0 = time.process_time()
    for node, names, values, ts, labels, at in batches:
        n += ingest(node, names, values, ts, labels, at)
    return time.process_time() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--peer-batch", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    batches = make_batches(args.nodes, args.seconds, args.batch)
    peer_batches = make_batches(args.nodes, args.seconds, args.peer_batch)
    rates, peer = [], []
    for _ in range(args.runs):
        cpu_s, n = run_once(batches)
        rates.append(n / cpu_s)
        peer_s, peer_n = run_once(peer_batches)
        peer.append(peer_n / peer_s)
    table = SignalTable()
    run_once(batches, table)
    views = []
    for _ in range(args.runs):
        t0 = time.process_time()
        for node in table.nodes:
            table.view(node, 5.0, 1000.0 + args.seconds)
        views.append((time.process_time() - t0) / len(table.nodes))
    result = {
        "question": "coordinator ingest rate (samples per CPU-second, one core)",
        "nodes": args.nodes,
        "batch": args.batch,
        "samples_per_run": n,
        "median_samples_per_s": round(statistics.median(rates)),
        "runs": [round(r) for r in rates],
        "peer_batch": args.peer_batch,
        "peer_median_samples_per_s": round(statistics.median(peer)),
        "ratio_batch_vs_peer": round(statistics.median(rates) / statistics.median(peer), 3),
        "series_per_node": len(next(iter(table.nodes.values())).series),
        "median_view_us": round(statistics.median(views) * 1e6, 1),
        "target": 200_000,
        "load1": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
