"""``ListJobs`` latency (what ``infermesh jobs ls`` calls) with 100,000 job records.

The records are written straight into the SQLite store the coordinator then opens (the same
keys and ``Job`` messages the coordinator writes, in transactions of 1,000 puts): 94%
SUCCEEDED, 3% FAILED, 2% CANCELLED, 1% RUNNING. The coordinator is started through the CLI on
that state directory, pinned to core 0; its start-up time (it loads every job) is reported.
A blocking client pinned to core 1 then times ``ListJobs`` ``--runs`` times per query (after
one warm-up) and reports the median:

* ``limit 50``: the newest 50 jobs (one screen);
* ``status RUNNING``: the running ones only;
* ``all``: every record in one response.

The same is done with ``--small`` jobs (1,000) in the same invocation; *x small* divides by
that peer row.

    nice .venv/bin/python benchmarks/control/bench_jobs_ls.py [--jobs 100000] [--runs 21]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import REPO, CoordinatorProcess, load_average, pin

from infermesh.client.coordinator import CoordinatorClient, pb
from infermesh.control.records import Records
from infermesh.control.store import Op, open_store

CELL = "local"
QUERIES = {
    "limit 50": {"limit": 50},
    "status RUNNING": {"status": "RUNNING"},
    "all": {},
}


def status_of(i: int) -> str:
    r = i % 100
    return "RUNNING" if r == 0 else "FAILED" if r < 4 else "CANCELLED" if r < 6 else "SUCCEEDED"


def job_record(i: int, t0: float) -> pb.Job:
    spec = pb.JobSpec(
        name="train",
        entrypoint="/srv/jobs/train_tiny_gpt.py",
        args=["trainer.max_steps=500", f"seed={i}"],
        nproc_per_node=8,
        nodes_min=2,
        nodes_max=4,
        tenant=f"team-{i % 7}",
    )
    job = pb.Job(job_id=f"train-{i + 1}", spec=spec, status=status_of(i))
    job.created_at = t0 + i
    job.updated_at = t0 + i + 600
    job.world_size = 16
    job.nodes.extend([f"node-{i % 997}", f"node-{(i + 1) % 997}"])
    job.step = 500
    job.steps_per_s = 3.5
    return job


async def write_jobs(db: Path, n: int) -> float:
    """Write ``n`` job records in transactions of 1,000; seconds taken."""
    store = open_store(f"sqlite:///{db}")
    records = Records(store, CELL)
    t0 = time.perf_counter()
    base = time.time() - n - 3600
    batch: list[Op] = []
    for i in range(n):
        job = job_record(i, base)
        batch.append(Op.put(records.key("jobs", job.job_id), job.SerializeToString()))
        if len(batch) == 1000 or i == n - 1:
            await store.txn([], batch)
            batch = []
    await store.close()
    return time.perf_counter() - t0


def client_main(address: str, runs: int) -> int:
    """Time each query ``runs`` times after a warm-up; print one JSON line."""
    out: dict[str, Any] = {}
    with CoordinatorClient(address, timeout_s=120) as client:
        client.wait_ready(30)
        for name, query in QUERIES.items():
            got = client.list_jobs(**query)  # warm-up, and the count
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                client.list_jobs(**query)
                times.append(time.perf_counter() - t0)
            out[name] = {"ms": statistics.median(times) * 1e3, "jobs": len(got)}
    print(json.dumps(out), flush=True)
    return 0


def measure(n: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="infermesh-jobs-") as tmp:
        state = Path(tmp)
        write_s = asyncio.run(write_jobs(state / "coordinator.db", n))
        with CoordinatorProcess(state, core=0, ready_timeout_s=600) as coordinator:
            argv = [*pin(1), sys.executable, __file__, "--role", "client"]
            argv += ["--address", coordinator.address, "--runs", str(runs)]
            proc = subprocess.run(
                argv, cwd=REPO, capture_output=True, text=True, timeout=900, check=False
            )
            if proc.returncode != 0:
                raise RuntimeError(f"the ListJobs client failed:\n{proc.stdout}{proc.stderr}")
            rss = coordinator.rss_mib()
        times = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"jobs": n, "write_s": write_s, "ready_s": coordinator.ready_s, "rss": rss, **times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000, help="the peer's job count")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--role", choices=["bench", "client"], default="bench")
    parser.add_argument("--address", default="", help="internal: the coordinator (client role)")
    args = parser.parse_args(argv)
    if args.role == "client":
        return client_main(args.address, args.runs)
    if args.jobs < 1 or args.small < 1 or args.runs < 1:
        parser.error("--jobs, --small and --runs must be >= 1")
    print(f"# load average at start: {load_average()}; cores: {os.cpu_count()}", flush=True)
    small, big = measure(args.small, args.runs), measure(args.jobs, args.runs)
    print(f"# load average at end: {load_average()}; median of {args.runs} calls per query")
    print("| query | jobs returned | ms (median) | x small | jobs returned (small) | ms (small) |")
    print("|---|---|---|---|---|---|")
    for name in QUERIES:
        b, s = big[name], small[name]
        print(
            f"| {name} | {b['jobs']:,} | {b['ms']:.2f} | {b['ms'] / s['ms']:.1f} "
            f"| {s['jobs']:,} | {s['ms']:.2f} |"
        )
    for label, row in (("small", small), ("large", big)):
        print(
            f"# {label}: {row['jobs']:,} jobs written in {row['write_s']:.1f} s; coordinator "
            f"ready in {row['ready_s']:.2f} s, RSS {row['rss']:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
