"""How long does the coordinator's collective planning pass take, and how long does it hold
the event loop, on a cell full of running jobs?

A real :class:`~infermesh.control.coordinator.Coordinator` (memory store, loopback port) is
filled in-process: N nodes with the signals an 8-GPU node sends (16 GPU series, a host load,
two link bandwidths, 8 ranks x 3 collective totals) and N/8 RUNNING jobs of 8 nodes x 8
ranks whose rank-0 node also reports the job's shape and fitted links (what the MeshHook
sends). Each run times one ``plan_collectives()`` pass while a ticker task (a 1 ms sleep
loop) measures the longest gap between its wake-ups: how long a heartbeat arriving during
the pass could wait. The first pass issues every job's plan; later passes find nothing
worth changing (the steady state). The peer row is the same pass without hand-backs
(``PLAN_BATCH`` larger than the job count): the cost of the whole pass in one piece.

    .venv/bin/python benchmarks/control/bench_plan_pass.py [--nodes 1000 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.control import coordinator as coordinator_module
from infermesh.control.coordinator import Coordinator

GPUS = 8
NODES_PER_JOB = 8


def _fill(coord: Coordinator, nodes: int) -> None:
    now = time.time()
    for j in range(nodes // NODES_PER_JOB):
        job = pb.Job(job_id=f"j{j}", status="RUNNING", world_size=NODES_PER_JOB * GPUS, round=1)
        job.spec.nproc_per_node = GPUS
        ids = [f"n{j * NODES_PER_JOB + k}" for k in range(NODES_PER_JOB)]
        job.nodes.extend(ids)
        coord.jobs.jobs[job.job_id] = job
        for k, node in enumerate(ids):
            names = ["gpu.util"] * GPUS + ["gpu.temp_c"] * GPUS + ["host.load1"]
            labels = [f"gpu={g}" for g in range(GPUS)] * 2 + [""]
            values = [0.5] * (2 * GPUS) + [1.0]
            names += ["comm.link_bandwidth_bytes_per_s"] * 2
            labels += ["link=intra", "link=inter"]
            values += [1e11, 4e10]
            if k == 0:
                names += ["comm.grad_bytes", "comm.bucket_bytes"]
                labels += [f"backend=nccl,job=j{j}", f"job=j{j}"]
                values += [4e9, 25 * 2**20]
                for link, latency, bandwidth in (("intra", 1e-6, 4e11), ("inter", 5e-6, 3.2e11)):
                    names += ["comm.link_latency_s", "comm.link_fitted_bytes_per_s"]
                    labels += [f"job=j{j},link={link}"] * 2
                    values += [latency, bandwidth]
            for r in range(GPUS):
                names += ["comm.allreduce_bytes", "comm.allreduce_seconds", "comm.allreduce_count"]
                labels += [f"job=j{j},link=world,rank={k * GPUS + r},strategy=ring"] * 3
                values += [1e12, 100.0, 1000.0]
            coord.signals.ingest(node, names, values, [now] * len(names), labels, now)


async def _one_pass(coord: Coordinator) -> tuple[float, float, int]:
    """(seconds of the pass, longest loop hold in seconds, plans changed)."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    changed = await coord.plan_collectives()
    elapsed = time.perf_counter() - t0
    stop.set()
    await task
    return elapsed, max(gaps), changed


async def _measure(nodes: int, runs: int, batch: int) -> dict[str, float]:
    coordinator_module.PLAN_BATCH = batch
    coord = Coordinator(store_url="memory://", port=0, plan_interval_s=0)
    await coord.start()
    try:
        _fill(coord, nodes)
        first, first_hold, changed = await _one_pass(coord)
        steady = [await _one_pass(coord) for _ in range(runs)]
        return {
            "jobs": nodes // NODES_PER_JOB,
            "first_s": first,
            "first_hold_s": first_hold,
            "issued": changed,
            "pass_s": statistics.median(s[0] for s in steady),
            "hold_s": statistics.median(s[1] for s in steady),
            "changed": max(s[2] for s in steady),
        }
    finally:
        await coord.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    batch = coordinator_module.PLAN_BATCH
    print(
        "| nodes | jobs | hand-back every | first pass s (plans issued) | longest hold ms | "
        f"steady pass s (median of {args.runs}) | longest hold ms | steady hold vs peer |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for nodes in args.nodes:
        rows = {}
        for label, size in (("peer: none", 10**9), (f"{batch} jobs", batch)):
            rows[label] = asyncio.run(_measure(nodes, args.runs, size))
        peer = rows["peer: none"]["hold_s"]
        for label, r in rows.items():
            print(
                f"| {nodes:,} | {r['jobs']:,} | {label} | {r['first_s']:.3f} ({r['issued']}) | "
                f"{r['first_hold_s'] * 1e3:.1f} | {r['pass_s']:.3f} | {r['hold_s'] * 1e3:.1f} | "
                f"{r['hold_s'] / peer:.2f}x |"
            )
        coordinator_module.PLAN_BATCH = batch


if __name__ == "__main__":
    main()
