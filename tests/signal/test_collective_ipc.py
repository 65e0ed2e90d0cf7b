"""Collective telemetry over a real zmq IPC socket: worker sender -> agent receiver."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from infermesh.core.errors import UsageError
from infermesh.signal import CollectorError, Sample, create_collector
from infermesh.signal.collective import (
    IPC_ENV,
    CollectiveCollector,
    CollectiveMessage,
    CollectiveReceiver,
    CollectiveRecord,
    CollectiveSender,
    JobFigures,
    ipc_endpoint,
    job_figures,
    link_class,
)

REPO = Path(__file__).resolve().parents[2]


def _collect_until(c: CollectiveCollector, name: str, timeout_s: float = 5.0) -> list[Sample]:
    deadline = time.monotonic() + timeout_s
    out: list[Sample] = []
    while time.monotonic() < deadline:
        out += c.collect(time.time())
        if any(s.name == name for s in out):
            return out
        time.sleep(0.01)
    raise AssertionError(f"no {name} sample within {timeout_s} s; got {out}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rec(group: str, nbytes: int, seconds: float, step: int = 0) -> CollectiveRecord:
    return CollectiveRecord(1000.0 + step, step, "ring", "none", group, nbytes, seconds)


def test_records_sent_by_a_worker_become_counters_and_link_bandwidth(tmp_path: Path) -> None:
    c = create_collector("collective", endpoint=ipc_endpoint(str(tmp_path / "agent.sock")))
    assert isinstance(c, CollectiveCollector)
    sender = CollectiveSender(c.endpoint, job="j1", rank=1)
    try:
        sender.add(_rec("intra", 4_000_000, 0.002, step=1))
        sender.add(_rec("inter", 1_000_000, 0.010, step=1))
        sender.add(_rec("leaders", 1_000_000, 0.010, step=2))
        sender.flush()
        got = _collect_until(c, "comm.allreduce_bytes")
    finally:
        sender.close()
        c.close()
    by = {(s.name, s.labels): s for s in got}
    inter = "job=j1,link=inter,rank=1,strategy=ring"
    assert by[("comm.allreduce_bytes", inter)].value == 2_000_000
    assert by[("comm.allreduce_seconds", inter)].value == pytest.approx(0.020)
    assert by[("comm.allreduce_count", inter)].value == 2
    assert by[("comm.allreduce_bytes", inter)].ts == 1002.0  # measured, not received
    assert by[("comm.link_bandwidth_bytes_per_s", "link=intra")].value == pytest.approx(2e9)
    assert by[("comm.link_bandwidth_bytes_per_s", "link=inter")].value == pytest.approx(1e8)


def test_counters_accumulate_across_collections(tmp_path: Path) -> None:
    c = CollectiveCollector(ipc_endpoint(str(tmp_path / "a.sock")))
    sender = CollectiveSender(c.endpoint, job="j", rank=0)
    try:
        for step in range(2):
            sender.add(_rec("world", 100, 0.001, step))
            sender.flush()
            got = _collect_until(c, "comm.allreduce_bytes")
            total = [s.value for s in got if s.name == "comm.allreduce_bytes"]
            assert total == [100.0 * (step + 1)]
    finally:
        sender.close()
        c.close()


def test_a_sender_without_an_agent_never_blocks_and_counts_its_drops(tmp_path: Path) -> None:
    endpoint = ipc_endpoint(str(tmp_path / "nobody.sock"))
    sender = CollectiveSender(endpoint, job="j", rank=0, hwm=10)
    t0 = time.monotonic()
    for step in range(100):
        sender.add(_rec("world", 10, 0.001, step))
        sender.flush()
    sender.close()
    assert time.monotonic() - t0 < 2.0
    assert sender.sent + sender.dropped == 100
    assert sender.dropped >= 80  # only the queue (high-water mark 10) was kept


def test_dropped_messages_are_reported_to_the_agent_once_it_listens(tmp_path: Path) -> None:
    endpoint = ipc_endpoint(str(tmp_path / "late.sock"))
    sender = CollectiveSender(endpoint, job="j", rank=0, hwm=1)
    for step in range(5):
        sender.add(_rec("world", 10, 0.001, step))
        sender.flush()
    assert sender.dropped >= 3
    c = CollectiveCollector(endpoint)
    try:
        deadline = time.monotonic() + 5.0
        got: list[Sample] = []
        while not any(s.name == "comm.dropped" for s in got):
            assert time.monotonic() < deadline, "the agent never saw the drop count"
            sender.add(_rec("world", 10, 0.001, 1))
            sender.flush()
            got += c.collect(time.time())
            time.sleep(0.01)
    finally:
        sender.close()
        c.close()
    assert next(s.value for s in got if s.name == "comm.dropped") >= 1


def test_a_malformed_frame_is_counted_not_fatal(tmp_path: Path) -> None:
    receiver = CollectiveReceiver(ipc_endpoint(str(tmp_path / "m.sock")))
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(receiver.endpoint)
    try:
        push.send(b"not json")
        push.send(CollectiveMessage("j", 0, (_rec("world", 1, 0.1),)).encode())
        got: list[CollectiveMessage] = []
        deadline = time.monotonic() + 5.0
        while not got and time.monotonic() < deadline:
            got = receiver.receive(timeout_ms=100)
    finally:
        push.close(0)
        receiver.close()
    assert receiver.malformed == 1
    assert got[0].records[0].bytes == 1


def test_the_message_round_trips_and_checks_its_version() -> None:
    msg = CollectiveMessage("job-7", 3, (_rec("intra", 123, 0.5, 9),), dropped=2)
    assert CollectiveMessage.decode(msg.encode()) == msg
    with pytest.raises(UsageError, match="version 99; this agent reads 1"):
        CollectiveMessage.decode(b'{"v": 99, "job": "j", "rank": 0, "records": []}')
    with pytest.raises(UsageError, match="malformed collective message"):
        CollectiveMessage.decode(b'{"v": 1, "rank": 0, "records": []}')


def test_link_classes_of_the_hook_groups() -> None:
    assert [link_class(g) for g in ("world", "intra", "inter", "leaders", "other")] == [
        "world",
        "intra",
        "inter",
        "inter",
        "world",
    ]


def test_endpoint_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Unix sockets allow 107"):
        ipc_endpoint("/tmp/" + "x" * 200)
    with pytest.raises(CollectorError, match="cannot bind the collective receiver"):
        CollectiveReceiver(ipc_endpoint(str(tmp_path / "missing-dir" / "a.sock")))
    with pytest.raises(UsageError, match="must be an endpoint like ipc://"):
        CollectiveSender("nonsense", job="j", rank=0)
    with pytest.raises(CollectorError, match="exactly one of endpoint"):
        CollectiveCollector()


_WORKER = """
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from infermesh.train import leave_process_group
from infermesh.train.hooks import MeshHookConfig, prepare
dist.init_process_group("gloo")
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(64, 64))
hook = prepare(model, MeshHookConfig(fixed_plan="ring/none", job="ipc-test"))
assert hook.signal is not None
for _ in range(3):
    model(torch.randn(8, 64)).sum().backward()
hook.close()
del hook, model
leave_process_group()
"""


@pytest.mark.slow
def test_mesh_hook_in_ddp_workers_sends_its_collectives_to_the_agent(tmp_path: Path) -> None:
    c = CollectiveCollector(ipc_endpoint(str(tmp_path / "agent.sock")))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            **{IPC_ENV: c.endpoint},
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    got = _collect_until(c, "comm.allreduce_count")
    c.close()
    counts = {s.labels: s.value for s in got if s.name == "comm.allreduce_count"}
    assert counts == {
        "job=ipc-test,link=world,rank=0,strategy=ring": 3.0,
        "job=ipc-test,link=world,rank=1,strategy=ring": 3.0,
    }
    # the job's shape rides along: what the coordinator plans the job's collectives with
    figures = job_figures("ipc-test", [(s.name, s.labels, s.value) for s in got])
    assert (figures.grad_bytes, figures.bucket_bytes) == (64 * 64 * 4 + 64 * 4, 25 * 2**20)
    assert figures.backend == "gloo" and figures.bandwidths.keys() == {"world"}


def test_job_figures_take_only_the_named_job_and_the_median_bandwidth() -> None:
    samples = [
        ("comm.grad_bytes", "backend=nccl,job=train-10", 9e9),
        ("comm.grad_bytes", "backend=gloo,job=train-1", 4096.0),
        ("comm.bucket_bytes", "job=train-1", 1024.0),
        ("comm.link_bandwidth_bytes_per_s", "link=inter", 1e9),
        ("comm.link_bandwidth_bytes_per_s", "link=inter", 3e9),
        ("comm.link_bandwidth_bytes_per_s", "link=inter", 2e9),
        ("comm.link_latency_s", "job=train-1,link=inter", 1e-4),
        ("comm.link_fitted_bytes_per_s", "job=train-1,link=inter", 1.2e8),
        ("comm.link_latency_s", "job=train-10,link=intra", 9.0),
        ("comm.link_latency_s", "job=train-1,link=intra", 3e-5),  # no bandwidth: left out
        ("gpu.util", "gpu=0", 50.0),
    ]
    assert job_figures("train-1", samples) == JobFigures(
        4096, 1024, "gloo", {"inter": 2e9}, {"inter": (1e-4, 1.2e8)}
    )
    assert job_figures("train-2", []) == JobFigures()


def test_the_collector_turns_shape_and_fitted_links_into_job_samples(tmp_path: Path) -> None:
    c = CollectiveCollector(ipc_endpoint(str(tmp_path / "a.sock")))
    sender = CollectiveSender(c.endpoint, job="j1", rank=0)
    sender.shape = (4096, 1024, "nccl")
    sender.links = (3e-5, 2e9, 1e-4, 1e8)
    sender.measured = (("ring", "none", 4096, 0.04),)
    sender.add(CollectiveRecord(1.0, 0, "ring", "none", "world", 4096, 0.01, False))
    sender.flush()
    got = _collect_until(c, "comm.link_latency_s")
    sender.close()
    c.close()
    figures = job_figures("j1", [(s.name, s.labels, s.value) for s in got])
    assert (figures.grad_bytes, figures.bucket_bytes, figures.backend) == (4096, 1024, "nccl")
    assert figures.fitted == {"intra": (3e-5, 2e9), "inter": (1e-4, 1e8)}
    assert figures.plan_seconds == {"ring/none/4096": 0.04}


def test_the_shape_survives_the_wire_and_old_messages_have_none() -> None:
    measured = (("ring", "none", 4096, 0.04), ("hierarchical", "none", 4096, 0.03))
    msg = CollectiveMessage(
        "j", 0, (), shape=(4096, 1024, "gloo"), links=(3e-5, 2e9, 1e-4, 1e8), measured=measured
    )
    back = CollectiveMessage.decode(msg.encode())
    assert (back.shape, back.links) == ((4096, 1024, "gloo"), (3e-5, 2e9, 1e-4, 1e8))
    assert back.measured == measured
    old = CollectiveMessage.decode(b'{"v": 1, "job": "j", "rank": 0, "records": []}')
    assert old.shape is None and old.links is None and old.measured == ()
    with pytest.raises(UsageError, match="malformed collective message"):
        CollectiveMessage.decode(b'{"v": 1, "job": "j", "rank": 0, "records": [], "shape": [1]}')
