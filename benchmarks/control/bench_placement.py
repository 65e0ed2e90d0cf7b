"""How long ``plan_placement`` takes on a 10,000-node cell (median of N runs).

The fleet: ``--nodes`` nodes (default 10,000), 8 slots each, 40 nodes to a rack, one node per
host, about 5% not ALIVE and 30% with some slots in use, shuffled with a fixed seed. Each
scenario is planned ``--runs`` times (default 21, after one warm-up) and reported as a
median, with its ratio against a *scan*: one plain pass over the same nodes that keeps the
ALIVE ones with 8 free slots -- the least any planner must do. A 1,000-node cell is timed in
the same invocation to show how the time grows with the cell.

    .venv/bin/python benchmarks/control/bench_placement.py [--nodes 10000] [--runs 21]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

from infermesh.core.cell import NodeInfo, NodeStatus, PlacementRefused, PlacementRequest
from infermesh.train.planning import plan_placement

NOW = 1_700_000_000.0
UNHEALTHY = [NodeStatus.SUSPECT, NodeStatus.DEAD, NodeStatus.DRAINING, NodeStatus.QUARANTINED]


def fleet(n: int, seed: int = 0) -> list[NodeInfo]:
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        status = rng.choice(UNHEALTHY) if rng.random() < 0.05 else NodeStatus.ALIVE
        used = rng.choice([1, 2, 4, 8]) if rng.random() < 0.3 else 0
        nodes.append(
            NodeInfo(
                node_id=f"node-{i}",
                hostname=f"host-{i}",
                rack=f"rack-{i // 40}",
                labels={"gpu": "h100" if i % 2 else "a100"},
                gpus=8,
                slots=8,
                used_slots=used,
                status=status,
                status_since=NOW - rng.randint(1, 3600) if status is not NodeStatus.ALIVE else 0.0,
            )
        )
    rng.shuffle(nodes)
    return nodes


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def scenarios(nodes: list[NodeInfo]) -> dict[str, Callable[[], object]]:
    n = len(nodes)
    healthy = [x for x in nodes if x.status is NodeStatus.ALIVE and x.free_slots == 8]
    keep = tuple(x.node_id for x in healthy[:64])

    def refused() -> None:
        try:
            plan_placement(PlacementRequest("big", n + 1, n + 1, 8), nodes, now=NOW)
        except PlacementRefused:
            return
        raise AssertionError("expected a refusal")

    return {
        "scan (peer)": lambda: [
            x for x in nodes if x.status is NodeStatus.ALIVE and x.free_slots >= 8
        ],
        "64 nodes x 8": lambda: plan_placement(PlacementRequest("j", 64, 64, 8), nodes, now=NOW),
        "64 nodes, gpu=h100": lambda: plan_placement(
            PlacementRequest("j", 64, 64, 8, constraints={"gpu": "h100"}), nodes, now=NOW
        ),
        "restart: keep 64, one lost": lambda: plan_placement(
            PlacementRequest("j", 32, 64, 8, keep=keep[1:]), nodes, now=NOW
        ),
        "auto (1:all)": lambda: plan_placement(PlacementRequest("j", 1, n, 8), nodes, now=NOW),
        "refused (needs n+1)": refused,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    sizes = [1_000, args.nodes] if args.nodes != 1_000 else [1_000]
    results = {
        size: {k: median_ms(f, args.runs) for k, f in scenarios(fleet(size)).items()}
        for size in sizes
    }
    big = results[args.nodes]
    print(f"load average before the table: {os.getloadavg()[0]:.2f}, runs per row: {args.runs}")
    header = "| scenario | " + " | ".join(f"{s:,} nodes ms" for s in sizes) + " | vs scan |"
    if len(sizes) > 1:
        header += f" {sizes[1] // sizes[0]}x nodes: time x |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in big:
        cells = " | ".join(f"{results[s][name]:.2f}" for s in sizes)
        row = f"| {name} | {cells} | {big[name] / big['scan (peer)']:.1f}x |"
        if len(sizes) > 1:
            row += f" {big[name] / results[sizes[0]][name]:.1f} |"
        print(row)


if __name__ == "__main__":
    main()
