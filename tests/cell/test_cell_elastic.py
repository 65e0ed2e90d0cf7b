"""End to end on loopback: a coordinator and agents as real processes, the tiny GPT as the job.

Each test submits with ``infermesh-run --nnodes MIN:MAX`` to a real coordinator (SQLite store
unless stated), disturbs the cell mid-run, and checks the job finishes SUCCEEDED with training
resumed from a checkpoint, and that the coordinator's records tell what happened.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cell.cellproc import Cell, submit, wait_for

pytestmark = pytest.mark.slow

TRAIN = [
    "examples/train_tiny_gpt.py",
    "trainer.ckpt_every=10",
    "trainer.log_every=10",
    "model.n_layer=2",
]


@pytest.fixture(params=["sqlite"])
def cell(request, tmp_path: Path):
    store = ""
    if request.param == "etcd":
        server = request.getfixturevalue("fresh_etcd_server")
        store = str(server.url)
    c = Cell(tmp_path, store=store)
    c.start_coordinator()
    yield c
    c.close()


both_stores = pytest.mark.parametrize("cell", ["sqlite", "etcd"], indirect=True)


def _run(cell: Cell, tmp_path: Path, nnodes: str, max_steps: int = 100):
    out = tmp_path / "submit.log"
    proc = submit(
        cell,
        out,
        "--nnodes",
        nnodes,
        "--nproc-per-node",
        "1",
        "--run-dir",
        str(tmp_path / "runs"),
        *TRAIN,
        f"trainer.max_steps={max_steps}",
        f"trainer.out_dir={tmp_path / 'tiny'}",
    )
    return proc, out


def _job(cell: Cell):
    with cell.client() as c:
        jobs = c.list_jobs()
        return jobs[0] if jobs else None


def _wait_step(cell: Cell, step: int, timeout_s: float = 90.0):
    return wait_for(
        lambda: (j := _job(cell)) is not None and j.step >= step and j, timeout_s, f"step {step}"
    )


def _finish(proc, out: Path, timeout_s: float = 150.0) -> str:
    rc = proc.wait(timeout=timeout_s)
    text = out.read_text()
    assert rc == 0, text[-3000:]
    assert re.search(r"train_tiny_gpt-\d+ SUCCEEDED", text), text[-2000:]
    return text


@both_stores
def test_killing_an_agent_mid_run_replans_and_resumes_from_the_checkpoint(cell, tmp_path):
    for i in range(3):
        cell.start_agent(f"node-{i}")
    cell.wait_nodes(3)
    proc, out = _run(cell, tmp_path, "2:3")
    job = _wait_step(cell, 25)
    assert job.world_size == 3 and job.status == "RUNNING"
    cell.kill_agent("node-2")
    with cell.client() as c:
        # the stream closes with the process: SUSPECT at once, replanned without it
        wait_for(
            lambda: c.get_job(job.job_id).job.world_size == 2, 30, "a 2-node round after the kill"
        )
    text = _finish(proc, out)
    assert re.search(r"resumed from \S+step_000000[1-9]0 at step [1-9]0", text), text[-2000:]
    with cell.client() as c:
        final = c.get_job(job.job_id)
        assert final.job.status == "SUCCEEDED" and final.job.restarts >= 1
        assert list(final.job.nodes)[:2] == ["node-0", "node-1"]
        reasons = [e.reason for e in final.events]
        assert any("node-2" in r and "lost" in r for r in reasons), reasons
        node2 = {n.spec.node_id: n for n in c.list_nodes()}["node-2"]
        assert node2.status in ("SUSPECT", "DEAD")


def test_a_new_agent_joins_a_running_job_at_the_next_round(cell, tmp_path):
    cell.start_agent("node-0")
    cell.start_agent("node-1")
    cell.wait_nodes(2)
    # a job too long to end before the new agent's launcher joins (it is cancelled below);
    # one that ends first succeeds without it (tests/cell/test_coordinator_api.py)
    proc, out = _run(cell, tmp_path, "2:3", max_steps=100_000)
    job = _wait_step(cell, 15)
    assert job.world_size == 2
    cell.start_agent("node-2")
    with cell.client() as c:
        wait_for(lambda: c.get_job(job.job_id).job.world_size == 3, 60, "a 3-node round")
        grown = c.get_job(job.job_id).job
        assert grown.nodes[2] == "node-2" and grown.round == 2
        wait_for(
            lambda: c.get_job(job.job_id).job.step >= grown.step + 10, 60, "10 steps on 3 nodes"
        )
        assert c.cancel_job(job.job_id).status == "CANCELLED"
    assert proc.wait(timeout=60) == 130
    text = out.read_text()
    assert "node node-2 is group rank 2 of 3" in text, text[-3000:]
    assert re.search(r"resumed from \S+ at step [1-9]\d*", text), text[-3000:]


def test_quarantining_a_node_moves_its_job_off_it(cell, tmp_path):
    for i in range(3):
        cell.start_agent(f"node-{i}")
    cell.wait_nodes(3)
    proc, out = _run(cell, tmp_path, "2:3")
    job = _wait_step(cell, 15)
    with cell.client() as c:
        node = c.set_node_state("node-1", "quarantine", "xid 79 on gpu 0")
        assert node.status == "QUARANTINED"
        wait_for(lambda: c.get_job(job.job_id).job.world_size == 2, 60, "a round without node-1")
    _finish(proc, out)
    with cell.client() as c:
        final = c.get_job(job.job_id).job
        assert "node-1" not in final.nodes
        node1 = {n.spec.node_id: n for n in c.list_nodes()}["node-1"]
        assert node1.status == "QUARANTINED" and node1.status_reason == "xid 79 on gpu 0"


def test_coordinator_sigkill_and_restart_loses_nothing_and_does_not_restart_the_job(cell, tmp_path):
    cell.start_agent("node-0")
    cell.start_agent("node-1")
    cell.wait_nodes(2)
    proc, out = _run(cell, tmp_path, "2:2")
    job = _wait_step(cell, 15)
    with cell.client() as c:
        before_events = [(e.seq, e.reason) for e in c.list_events(limit=1000)]
        before_nodes = {n.spec.node_id: n.epoch for n in c.list_nodes()}
    port = int(cell.address.rsplit(":", 1)[1])
    cell.kill_coordinator()
    cell.start_coordinator(port)
    with cell.client() as c:
        after = c.get_job(job.job_id).job
        assert after.status == "RUNNING" and after.round == job.round
        events = [(e.seq, e.reason) for e in c.list_events(limit=1000)]
        assert events[: len(before_events)] == before_events
        nodes = {n.spec.node_id: n.epoch for n in c.list_nodes()}
        assert nodes == before_nodes  # agents reconnected with their epoch
    _finish(proc, out)
    with cell.client() as c:
        final = c.get_job(job.job_id).job
        assert final.restarts == 0 and final.round == job.round


def test_per_node_mode_joins_the_coordinators_rendezvous(cell, tmp_path):
    """Slurm style: the same command on every node, no agents; the coordinator ranks them."""
    import os
    import subprocess

    from tests.cell.cellproc import BIN, ROOT

    procs = []
    for node in ("n-b", "n-a"):
        env = dict(os.environ, INFERMESH_NODE_ID=node)
        env.pop("INFERMESH_COORDINATOR", None)
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "infermesh-run"),
                    "--nnodes",
                    "2",
                    "--nproc-per-node",
                    "1",
                    "--rdzv-backend",
                    "infermesh",
                    "--rdzv-endpoint",
                    cell.address,
                    "--rdzv-id",
                    "slurm-42",
                    "--local-addr",
                    "127.0.0.1",
                    "--run-dir",
                    str(tmp_path / "runs"),
                    *TRAIN[:1],
                    "trainer.max_steps=10",
                    "model.n_layer=1",
                    f"trainer.out_dir={tmp_path / 'tiny'}",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=150)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "node n-a is group rank 0 of 2 (n-a, n-b)" in outputs[1]
    assert "node n-b is group rank 1 of 2 (n-a, n-b)" in outputs[0]
