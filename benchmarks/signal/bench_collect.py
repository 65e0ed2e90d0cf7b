"""Agent collection overhead at 1 Hz: CPU percent of one core, 8 fake GPUs plus the host.

Question: what does the agent's telemetry loop cost a node? The loop runs the real NVML
collector over FakeNvml (8 GPUs, XID watcher thread included) and the host collector once
per second, and builds the column batch it would send. CPU time is the whole process's
(``time.process_time``: every thread) over the wall time of the run. The peer run in the
same invocation is the host collector alone. Target: < 1 % of one core.

    python benchmarks/signal/bench_collect.py [--seconds 10] [--hz 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from infermesh.signal import SampleBatch, create_collector


def loop(names: list[str], seconds: float, hz: float) -> tuple[float, int]:
    """Run the collectors ``names`` at ``hz`` for ``seconds``; return (CPU %, samples)."""
    collectors = [
        create_collector("fake_nvml", gpus=8, event_wait_ms=500)
        if n == "fake_nvml"
        else create_collector(n)
        for n in names
    ]
    period = 1.0 / hz
    samples = 0
    try:
        wall0, cpu0 = time.monotonic(), time.process_time()
        next_t = wall0
        rounds = int(seconds * hz)
        for _ in range(rounds):
            now = time.time()
            batch = SampleBatch()
            for c in collectors:
                batch.extend(c.collect(now))
            samples += len(batch)
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    finally:
        for c in collectors:
            c.close()
    return 100.0 * cpu / wall, samples // rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--hz", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    full, peer = [], []
    per_round = 0
    for _ in range(args.runs):
        pct, per_round = loop(["fake_nvml", "host"], args.seconds, args.hz)
        full.append(pct)
        peer.append(loop(["host"], args.seconds, args.hz)[0])
    result = {
        "question": "agent collection CPU % of one core (8 fake GPUs + host, 1 Hz)",
        "samples_per_round": per_round,
        "median_cpu_percent": round(statistics.median(full), 3),
        "runs": [round(p, 3) for p in full],
        "peer_host_only_median_cpu_percent": round(statistics.median(peer), 3),
        "target_percent": 1.0,
        "load1": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
