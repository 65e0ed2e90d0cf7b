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


def _figures(coord, node: str, job_id: str, grad_bytes: float, inter_Bps: float) -> None:
    """A heartbeat carrying what an agent reports of a job's hook: its shape, a bandwidth."""
    beat = pb.AgentHeartbeat(node_id=node, epoch=1, seq=1)
    beat.jobs.append(pb.JobReport(job_id=job_id, state="running", step=10))
    tel = beat.telemetry
    tel.name.extend(["comm.grad_bytes", "comm.bucket_bytes", "comm.link_bandwidth_bytes_per_s"])
    tel.value.extend([grad_bytes, 25 * 2**20, inter_Bps])
    now = coord.run(_now())
    tel.ts.extend([now, now, now])
    tel.labels.extend([f"backend=gloo,job={job_id}", f"job={job_id}", "link=inter"])
    _beat(coord, node, beat)


def test_plan_for_a_live_job_uses_its_measured_bytes_and_bandwidth(coord):
    for node in ("node-a", "node-b"):
        _register(coord, node)
    spec = pb.JobSpec(name="t", entrypoint="/x.py", nproc_per_node=2, nodes_min=2, nodes_max=2)
    with CoordinatorClient(coord.address) as client:
        job = client.submit_job(spec).job
    _figures(coord, "node-a", job.job_id, 4e7, 2.5e9)
    r = invoke("topo", "plan", job.job_id, "--coordinator", coord.address)
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"live job {job.job_id} (PLACED): 2 node(s) x 2 rank(s), step 10")
    assert "38.1MiB of gradients per step (gloo)" in lines[0]
    assert "measured bandwidth inter 2.3GiB/s" in lines[0]
    # the job's backend picks the profile: gloo's, with the measured bandwidth fitted in
    assert lines[1].startswith("2 node(s) x 2 rank(s), 40000000 of gradients per step")
    assert "links cpu-loopback" in lines[1] and "inter 1 x loopback: measured" in lines[1]


def test_the_coordinators_plan_of_a_running_job_is_shown_and_kept_until_it_pays_to_change(
    coord,
):
    for node in ("node-a", "node-b"):
        _register(coord, node)
    spec = pb.JobSpec(name="t", entrypoint="/x.py", nproc_per_node=2, nodes_min=2, nodes_max=2)
    with CoordinatorClient(coord.address) as client:
        job = client.submit_job(spec).job
        _join_both(coord, job.job_id)  # round 1: RUNNING, world size 4
        planner = coord.coordinator
        assert coord.run(planner.plan_collectives()) == 0  # the hook has said nothing yet
        _figures(coord, "node-a", job.job_id, 4e7, 12e6)  # ~100 Mbit/s between the nodes
        assert coord.run(planner.plan_collectives()) == 1
        slow = client.get_job(job.job_id).job.plan
        assert (slow.version, slow.algorithm) == (1, "hierarchical")
        _figures(coord, "node-a", job.job_id, 4e7, 13e6)  # a little faster: not worth a change
        assert coord.run(planner.plan_collectives()) == 0
        _figures(coord, "node-a", job.job_id, 4e7, 1e9)  # a fast network: ring pays
        assert coord.run(planner.plan_collectives()) == 1
        fast = client.get_job(job.job_id)
        assert (fast.job.plan.version, fast.job.plan.algorithm) == (2, "ring")
        assert "faster than hierarchical" in fast.job.plan.reason
        reasons = [e.reason for e in fast.events]
        assert sum(r.startswith("collective plan v") for r in reasons) == 2
        # the links the job's hook fitted from its own timings beat the nodes' aggregate
        _fitted(coord, "node-a", job.job_id, inter_latency_s=1e-4, node_Bps=12e6)
        assert coord.run(planner.plan_collectives()) == 1
        refit = client.get_job(job.job_id).job.plan
        assert (refit.version, refit.algorithm) == (3, "hierarchical")
    r = invoke("topo", "plan", job.job_id, "--coordinator", coord.address)
    assert r.code == 0, r.stderr
    assert r.stdout.splitlines()[1].startswith("the coordinator's plan: v3 hierarchical/none/")
    r = invoke("jobs", "show", job.job_id, "--coordinator", coord.address)
    assert r.code == 0 and "collectives: v3 hierarchical/none/" in r.stdout, r.stdout


def _fitted(coord, node: str, job_id: str, inter_latency_s: float, node_Bps: float) -> None:
    """A heartbeat with the inter-node link as the job's hook fitted it."""
    beat = pb.AgentHeartbeat(node_id=node, epoch=1, seq=1)
    tel = beat.telemetry
    tel.name.extend(["comm.link_latency_s", "comm.link_fitted_bytes_per_s"])
    tel.value.extend([inter_latency_s, node_Bps])
    now = coord.run(_now())
    tel.ts.extend([now, now])
    tel.labels.extend([f"job={job_id},link=inter"] * 2)
    _beat(coord, node, beat)


def _measured(coord, node: str, job_id: str, plans: dict[str, float]) -> None:
    """A heartbeat with the collective seconds per step the job's hook measured per plan."""
    beat = pb.AgentHeartbeat(node_id=node, epoch=1, seq=1)
    tel = beat.telemetry
    now = coord.run(_now())
    for label, seconds in plans.items():
        tel.name.append("comm.plan_step_seconds")
        tel.value.append(seconds)
        tel.ts.append(now)
        tel.labels.append(f"job={job_id},strategy={label}")
    _beat(coord, node, beat)


def test_the_coordinator_probes_a_plan_its_model_cannot_rule_out_and_keeps_the_faster(coord):
    """Fitted on hierarchical's timings the model over-prices the leader variant; the
    coordinator sends it as a probe, waits until the hook measured it, then keeps the faster
    measured plan."""
    for node in ("node-a", "node-b"):
        _register(coord, node)
    spec = pb.JobSpec(name="t", entrypoint="/x.py", nproc_per_node=2, nodes_min=2, nodes_max=2)
    with CoordinatorClient(coord.address) as client:
        job = client.submit_job(spec).job
        _join_both(coord, job.job_id)
        planner = coord.coordinator

        def plan() -> pb.CollectivePlan:
            return client.get_job(job.job_id).job.plan

        _figures(coord, "node-a", job.job_id, 4e7, 12e6)  # slow network: two-level wins
        assert coord.run(planner.plan_collectives()) == 1
        first = plan()
        assert (first.version, first.algorithm, first.probe) == (1, "hierarchical", False)
        window = f"{first.fusion_bytes}"
        # the hook measured hierarchical 5% above the model; the leader variant is close enough
        _measured(
            coord, "node-a", job.job_id, {f"hierarchical/none/{window}": 1.05 * first.predicted_s}
        )
        assert coord.run(planner.plan_collectives()) == 1
        probe = plan()
        assert (probe.version, probe.algorithm, probe.probe) == (2, "hierarchical_leader", True)
        assert probe.reason.startswith("exploring: never measured")
        assert coord.run(planner.plan_collectives()) == 0  # not measured yet: it keeps running
        # measured: the leader variant is 30% faster than hierarchical: kept, probing over
        _measured(
            coord,
            "node-a",
            job.job_id,
            {
                f"hierarchical/none/{window}": 1.05 * first.predicted_s,
                f"hierarchical_leader/none/{probe.fusion_bytes}": 0.7 * first.predicted_s,
            },
        )
        assert coord.run(planner.plan_collectives()) == 1
        kept = plan()
        assert (kept.version, kept.algorithm, kept.probe) == (3, "hierarchical_leader", False)
        assert "after exploring" in kept.reason
        assert coord.run(planner.plan_collectives()) == 0  # settled


def _join_both(coord, job_id: str) -> None:
    import asyncio

    async def join(node: str):
        channel, stub = async_stub(coord.address)
        try:
            request = pb.JoinRequest(
                run_id=job_id, node_id=node, addr="127.0.0.1", port=1, nodes_min=2, nodes_max=2
            )
            return await stub.RendezvousJoin(request, timeout=10)
        finally:
            await channel.close()

    async def both():
        return await asyncio.gather(join("node-a"), join("node-b"))

    coord.run(both())


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
