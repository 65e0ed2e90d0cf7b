"""``infermesh topo plan JOB``: a running job's shape and measured figures from the cell."""

from __future__ import annotations

import pytest

from infermesh.client.coordinator import CoordinatorClient, async_stub, pb
from tests.cell.conftest import invoke
from tests.cell.inproc import ThreadedCoordinator


@pytest.fixture
def coord():
    c = ThreadedCoordinator()
    yield c
    c.close()


def _beat(coord, node: str, beat: pb.AgentHeartbeat) -> None:
    async def go():
        channel, stub = async_stub(coord.address)

        async def one():
            yield beat

        try:
            return [m async for m in stub.Heartbeat(one())]
        finally:
            await channel.close()

    coord.run(go())


def _register(coord, node: str) -> None:
    async def go():
        channel, stub = async_stub(coord.address)
        spec = pb.NodeSpec(node_id=node, hostname=node, slots=2, no_gpu_reason="test")
        try:
            await stub.Register(pb.RegisterRequest(spec=spec))
        finally:
            await channel.close()

    coord.run(go())


def test_plan_for_a_live_job_uses_its_measured_bytes_and_bandwidth(coord):
    for node in ("node-a", "node-b"):
        _register(coord, node)
    spec = pb.JobSpec(name="t", entrypoint="/x.py", nproc_per_node=2, nodes_min=2, nodes_max=2)
    with CoordinatorClient(coord.address) as client:
        job = client.submit_job(spec).job
    beat = pb.AgentHeartbeat(node_id="node-a", epoch=1, seq=1)
    beat.jobs.append(pb.JobReport(job_id=job.job_id, state="running", step=10))
    tel = beat.telemetry
    tel.name.extend(["comm.allreduce_bytes", "comm.link_bandwidth_bytes_per_s"])
    tel.value.extend([4e8, 2.5e9])
    now = coord.run(_now())
    tel.ts.extend([now, now])
    tel.labels.extend([f"job={job.job_id},link=inter,rank=0,strategy=ring", "link=inter"])
    _beat(coord, "node-a", beat)
    r = invoke("topo", "plan", job.job_id, "--coordinator", coord.address)
    assert r.code == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"live job {job.job_id} (PLACED): 2 node(s) x 2 rank(s), step 10")
    assert "38.1MiB all-reduced per step (measured)" in first
    assert "measured bandwidth inter 2.3GiB/s" in first
    assert "inter 8 x rack: measured" in r.stdout.splitlines()[1]


def test_plan_for_a_job_without_timings_asks_for_the_missing_flags(coord):
    _register(coord, "node-a")
    spec = pb.JobSpec(name="t", entrypoint="/x.py", nproc_per_node=1, nodes_min=1, nodes_max=1)
    with CoordinatorClient(coord.address) as client:
        job = client.submit_job(spec).job
    r = invoke("topo", "plan", job.job_id, "--coordinator", coord.address)
    assert r.code == 2
    assert "no collective timings yet; give --bytes" in r.stderr
    r = invoke("topo", "plan", "nope-9", "--coordinator", coord.address)
    assert r.code == 3 and "no job 'nope-9'" in r.stderr


async def _now() -> float:
    import time

    return time.time()
