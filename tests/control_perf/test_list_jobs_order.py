"""``JobManager.newest`` (behind ``ListJobs``) and ``Records.load_logs`` on a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.control.jobs import JobManager
from infermesh.control.membership import Membership
from infermesh.control.records import Records
from infermesh.control.store import open_store


def _job(number: int, created: float, status: str) -> pb.Job:
    spec = pb.JobSpec(entrypoint="/srv/train.py", nproc_per_node=1, nodes_min=1)
    return pb.Job(job_id=f"train-{number}", spec=spec, status=status, created_at=created)


async def _loaded(tmp: Path, jobs: list[pb.Job]) -> JobManager:
    records = Records(open_store(f"sqlite:///{tmp / 'state.db'}"), "local")
    for job in jobs:
        await records.put("jobs", job.job_id, job)
    manager = JobManager(records, Membership(records))
    await manager.load()
    return manager


def test_newest_orders_by_creation_not_by_key(tmp_path: Path) -> None:
    # keys sort as train-1, train-10, train-2, ...; creation order is 1, 2, ..., 12
    jobs = [_job(i, 1000.0 + i, "SUCCEEDED" if i % 3 else "RUNNING") for i in range(1, 13)]
    manager = asyncio.run(_loaded(tmp_path, jobs))

    assert [j.job_id for j in manager.newest()] == [f"train-{i}" for i in range(12, 0, -1)]
    assert [j.job_id for j in manager.newest(limit=3)] == ["train-12", "train-11", "train-10"]
    running = manager.newest("RUNNING", limit=2)
    assert [j.job_id for j in running] == ["train-12", "train-9"]
    assert [j.job_id for j in manager.newest("FAILED")] == []


def test_logs_load_in_one_pass_and_sequences_continue(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, list[pb.LogLine]], list[str]]:
        store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
        records = Records(store, "local")
        for job_id, texts in {"a-1": ["x", "y"], "b-2": ["z"], "gone-3": ["old"]}.items():
            for text in texts:
                await records.append_logs(job_id, [pb.LogLine(job_id=job_id, text=text)])
        fresh = Records(store, "local")
        loaded = await fresh.load_logs(["a-1", "b-2", "c-4"])
        await fresh.append_logs("a-1", [pb.LogLine(job_id="a-1", text="after")])
        items, _ = await store.range(fresh.key("logs", "a-1") + "/")
        return loaded, [kv.key.rsplit("/", 1)[1] for kv in items]

    loaded, a_keys = asyncio.run(scenario())

    assert {k: [ln.text for ln in v] for k, v in loaded.items()} == {
        "a-1": ["x", "y"],
        "b-2": ["z"],
        "c-4": [],
    }
    assert a_keys == ["000000000001", "000000000002", "000000000003"]
