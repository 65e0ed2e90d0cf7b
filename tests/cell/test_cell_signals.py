"""Signals through the real heartbeat stream: inventory, fused view, XID -> quarantine."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from infermesh.agent.agent import NodeAgent
from infermesh.agent.telemetry import Telemetry
from infermesh.client.coordinator import CoordinatorClient
from infermesh.signal.api import create_collector
from tests.cell.cellproc import wait_for
from tests.cell.inproc import ThreadedCoordinator


@pytest.fixture
def coord():
    c = ThreadedCoordinator()
    yield c
    c.close()


def _start(coord, node_id: str, telemetry: Telemetry, tmp_path) -> NodeAgent:
    agent = NodeAgent(
        coordinator=coord.address,
        node_id=node_id,
        workdir=tmp_path / node_id,
        addr="127.0.0.1",
        telemetry=telemetry,
    )
    agent.interval_s = 0.2
    asyncio.run_coroutine_threadsafe(agent.run(), coord.loop)
    return agent


def _stop(coord, agent: NodeAgent) -> None:
    coord.loop.call_soon_threadsafe(agent.stop)


@contextlib.contextmanager
def _two_agents(tmp_path, **options):
    """A coordinator with agents n0 (which binds the workers' collective socket) and n1;
    yields (coordinator, n0's telemetry, client) once both registered."""
    coord = ThreadedCoordinator(**options)
    telemetry = Telemetry.for_node(collective_socket=str(tmp_path / "sig.sock"))
    agents = []
    try:
        agents = [
            _start(coord, "n0", telemetry, tmp_path),
            _start(coord, "n1", Telemetry([create_collector("host")]), tmp_path),
        ]
        with CoordinatorClient(coord.address) as c:
            wait_for(lambda: len(c.list_nodes()) == 2, 10, "registration")
            yield coord, telemetry, c
    finally:
        for agent in agents:
            _stop(coord, agent)
        coord.close()
        telemetry.close()


def test_cpu_only_agent_reports_host_signals_and_says_no_gpu(coord, tmp_path):
    agent = _start(coord, "cpu-0", Telemetry([create_collector("host")]), tmp_path)
    try:
        with CoordinatorClient(coord.address) as c:
            wait_for(lambda: c.list_nodes(), 10, "registration")
            node = c.list_nodes()[0]
            assert not node.spec.gpus and node.spec.no_gpu_reason
            detail = wait_for(lambda: (d := c.get_node("cpu-0")).signals and d, 10, "host signals")
            names = {s.name for s in detail.signals}
            assert any(n.startswith("host.") for n in names), names
            assert all(s.age_s < 10 for s in detail.signals)
            assert node.health in ("", "ok")
    finally:
        _stop(coord, agent)


def test_injected_xid_quarantines_the_node_with_the_reason(coord, tmp_path):
    fake = create_collector("fake_nvml", gpus=4, xid=[(2, 79, 3)])
    agent = _start(coord, "gpu-0", Telemetry([create_collector("host"), fake]), tmp_path)
    try:
        with CoordinatorClient(coord.address) as c:
            wait_for(lambda: c.list_nodes(), 10, "registration")
            assert len(c.list_nodes()[0].spec.gpus) == 4
            node = wait_for(
                lambda: (n := c.list_nodes()[0]).status == "QUARANTINED" and n, 15, "quarantine"
            )
            assert "79" in node.status_reason and node.health == "quarantine"
            events = c.list_events(subject="gpu-0")
            assert events[-1].to_state == "QUARANTINED" and "79" in events[-1].reason
            undrained = c.set_node_state("gpu-0", "undrain")
            assert undrained.status == "ALIVE" and "cleared" in undrained.status_reason
    finally:
        _stop(coord, agent)


@pytest.mark.slow
def test_straggler_from_a_worker_reaches_the_job_and_can_quarantine_its_node(tmp_path):
    """Worker hook -> zmq IPC -> agent -> heartbeat -> coordinator: event, message, quarantine."""
    from infermesh.client.coordinator import pb
    from infermesh.signal.collective import CollectiveSender

    with _two_agents(tmp_path, quarantine_stragglers=True) as (_, telemetry, c):
        script = tmp_path / "idle.py"
        script.write_text("import time\ntime.sleep(60)\n")
        spec = pb.JobSpec(
            name="slow", entrypoint=str(script), nproc_per_node=1, nodes_min=2, nodes_max=2
        )
        job = c.submit_job(spec).job
        running = wait_for(
            lambda: (j := c.get_job(job.job_id).job).status == "RUNNING" and j, 60, "RUNNING"
        )
        host = list(running.nodes)[1]  # rank 1's node
        sender = CollectiveSender(telemetry.collective_endpoint, job=job.job_id, rank=0)
        sender.straggler(step=40, rank=1, busy_s=0.3, others_median_s=0.1)
        sender.flush()
        detail = wait_for(
            lambda: "straggler" in (d := c.get_job(job.job_id)).job.message and d,
            10,
            "the straggler report",
        )
        events = [e.reason for e in detail.events]
        assert f"rank 1 on {host} is a straggler: 3.0x its peers' time" in events
        node = wait_for(
            lambda: (
                (n := {x.spec.node_id: x for x in c.list_nodes()}[host]).status == "QUARANTINED"
                and n
            ),
            10,
            "quarantine",
        )
        assert node.status_reason.startswith("straggler: 3.0x")
        sender.close()
        c.cancel_job(job.job_id)


def test_coordinator_and_agent_metrics_are_served_over_http(coord, tmp_path):
    import urllib.request

    from infermesh.obs.metrics import serve

    port = serve(0, addr="127.0.0.1")
    fake = create_collector("fake_nvml", gpus=2)
    agent = _start(coord, "gpu-m", Telemetry([create_collector("host"), fake]), tmp_path)
    try:
        with CoordinatorClient(coord.address) as c:
            wait_for(lambda: c.list_nodes(), 10, "registration")
            wait_for(lambda: c.get_node("gpu-m").signals, 10, "signals")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        def exported() -> str:
            text = scrape()
            return text if 'node="gpu-m"' in text and "infermesh_gpu_" in text else ""

        text = wait_for(exported, 15, "node signal gauges")
        assert 'infermesh_coordinator_heartbeats_total{cell="local"}' in text
        assert 'infermesh_nodes{cell="local"}' in text
        assert 'infermesh_coordinator_samples_total{cell="local"}' in text
        assert "request_id" not in text  # no unbounded label values
    finally:
        _stop(coord, agent)


def test_the_coordinator_plans_a_running_job_from_its_figures_and_its_agents_hand_it_over(
    tmp_path,
):
    """Hook shape + timings -> agent -> coordinator plans -> heartbeat reply -> agent writes the
    plan file its workers were told about; the same figures again change nothing."""
    import json

    from infermesh.client.coordinator import pb
    from infermesh.signal.collective import CollectiveRecord, CollectiveSender

    with _two_agents(tmp_path, plan_interval_s=0) as (coord, telemetry, c):
        script = tmp_path / "idle.py"
        script.write_text(
            "import os, pathlib, time\n"
            f"pathlib.Path({str(tmp_path)!r}, os.environ['INFERMESH_NODE_ID'] + '.env')"
            ".write_text(os.environ.get('INFERMESH_PLAN_FILE', ''))\n"
            "time.sleep(60)\n"
        )
        spec = pb.JobSpec(
            name="planned", entrypoint=str(script), nproc_per_node=1, nodes_min=2, nodes_max=2
        )
        job = c.submit_job(spec).job
        wait_for(lambda: c.get_job(job.job_id).job.status == "RUNNING", 60, "RUNNING")
        assert coord.run(coord.coordinator.plan_collectives()) == 0  # no figures yet
        sender = CollectiveSender(telemetry.collective_endpoint, job=job.job_id, rank=0)
        sender.shape = (64 * 2**20, 25 * 2**20, "gloo")
        sender.add(CollectiveRecord(0.0, 1, "ring", "none", "world", 64 * 2**20, 0.5, False))
        sender.flush()
        wait_for(
            lambda: any(s.name == "comm.grad_bytes" for s in c.get_node("n0").signals),
            10,
            "the job's shape at the coordinator",
        )
        assert coord.run(coord.coordinator.plan_collectives()) == 1
        planned = c.get_job(job.job_id)
        plan = planned.job.plan
        assert (plan.version, plan.algorithm) == (1, "ring")  # 1 rank per node: flat only
        assert "2 node(s) x 1 rank(s), gloo" in plan.reason
        assert any(
            e.reason.startswith(f"collective plan v1 {plan.algorithm}/none/")
            for e in planned.events
        )
        # each agent got it on its heartbeat stream and wrote it where its workers look
        for node in ("n0", "n1"):
            env_file = tmp_path / f"{node}.env"
            wait_for(env_file.exists, 30, f"{node}'s worker")
            path = env_file.read_text()
            assert path == str(tmp_path / node / "plans" / f"{job.job_id}.json")
            wait_for(lambda p=path: os.path.exists(p), 10, f"{node}'s plan file")
            written = json.loads(Path(path).read_text())
            assert (written["version"], written["algorithm"]) == (1, plan.algorithm)
            assert written["fusion_bytes"] == plan.fusion_bytes
        assert coord.run(coord.coordinator.plan_collectives()) == 0  # kept: same figures
        sender.close()
        c.cancel_job(job.job_id)
