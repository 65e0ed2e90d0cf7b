"""The coordinator's gRPC API against a real server on loopback (memory store).

Every bad request gets a status code and a message naming the problem, and leaves the store
exactly as it was (same revision).
"""

from __future__ import annotations

import time

import grpc
import pytest

from infermesh.client.coordinator import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorUnavailable,
    NotFound,
    async_stub,
    pb,
)
from tests.cell.cellproc import wait_for
from tests.cell.inproc import ThreadedCoordinator


@pytest.fixture
def coord():
    c = ThreadedCoordinator(suspect_after_s=0.6, dead_after_s=1.5)
    yield c
    c.close()


@pytest.fixture
def client(coord):
    with CoordinatorClient(coord.address) as c:
        yield c


def _spec(node_id: str, slots: int = 2) -> pb.NodeSpec:
    return pb.NodeSpec(
        node_id=node_id, hostname="host-a", slots=slots, no_gpu_reason="test node", cpus=2
    )


def _register(coord, node_id: str, epoch: int = 0, slots: int = 2) -> int:
    async def go():
        channel, stub = async_stub(coord.address)
        try:
            reply = await stub.Register(pb.RegisterRequest(spec=_spec(node_id, slots), epoch=epoch))
            return reply.epoch
        finally:
            await channel.close()

    return coord.run(go())


def _revision(client) -> int:
    return client.stats().store_revision


def _job(**fields) -> pb.JobSpec:
    base = dict(name="t", entrypoint="/bin/true", nproc_per_node=1, nodes_min=1, nodes_max=1)
    base.update(fields)
    return pb.JobSpec(**base)


def test_registration_lists_the_node_and_records_an_event(coord, client):
    assert _register(coord, "node-a") == 1
    (node,) = client.list_nodes()
    assert (node.spec.node_id, node.status, node.epoch) == ("node-a", "ALIVE", 1)
    assert node.spec.cell == "local"
    (event,) = client.list_events(subject="node-a")
    assert (event.to_state, event.reason) == ("ALIVE", "registered (epoch 1)")


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (pb.NodeSpec(node_id="bad id!", hostname="h", no_gpu_reason="x"), "node id 'bad id!'"),
        (pb.NodeSpec(node_id="n1", hostname="", no_gpu_reason="x"), "hostname is empty"),
        (pb.NodeSpec(node_id="n1", hostname="h"), "no GPUs and no reason"),
        (pb.NodeSpec(node_id="n1", hostname="h", no_gpu_reason="x", slots=-1), "negative"),
        (
            pb.NodeSpec(node_id="n1", hostname="h", no_gpu_reason="x", cell="other"),
            "--cell local",
        ),
    ],
)
def test_malformed_registrations_are_rejected_and_write_nothing(coord, client, spec, needle):
    before = _revision(client)

    async def go():
        channel, stub = async_stub(coord.address)
        try:
            await stub.Register(pb.RegisterRequest(spec=spec))
        finally:
            await channel.close()

    with pytest.raises(grpc.aio.AioRpcError) as info:
        coord.run(go())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()
    assert _revision(client) == before and client.list_nodes() == []


def _stream(
    coord, node_id: str, epoch: int, beats: int = 1, want_ack: bool = True
) -> list[pb.CoordinatorMessage]:
    async def go():
        channel, stub = async_stub(coord.address)

        async def requests():
            for seq in range(1, beats + 1):
                yield pb.AgentHeartbeat(node_id=node_id, epoch=epoch, seq=seq, want_ack=want_ack)

        try:
            return [m async for m in stub.Heartbeat(requests())]
        finally:
            await channel.close()

    return coord.run(go())


def test_duplicate_node_id_is_refused_while_the_first_agent_is_live(coord, client):
    _register(coord, "node-a")

    async def hold_and_register_again():
        channel, stub = async_stub(coord.address)
        queue = [pb.AgentHeartbeat(node_id="node-a", epoch=1, seq=1, want_ack=True)]

        async def requests():
            yield queue[0]
            await asyncio.sleep(2)  # keep the stream (the live agent) open

        import asyncio

        call = stub.Heartbeat(requests())
        await call.read()
        try:
            await stub.Register(pb.RegisterRequest(spec=_spec("node-a")))
        finally:
            call.cancel()
            await channel.close()

    with pytest.raises(grpc.aio.AioRpcError) as info:
        coord.run(hold_and_register_again())
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "another --node-id" in info.value.details()


def test_stale_epochs_are_fenced_and_their_reports_dropped(coord, client):
    _register(coord, "node-a")
    (reply,) = _stream(coord, "node-a", epoch=7)
    assert "epoch 7 is stale" in reply.fenced
    (reply,) = _stream(coord, "node-b", epoch=1)
    assert "not registered" in reply.fenced
    (reply,) = _stream(coord, "node-a", epoch=1)
    assert reply.fenced == "" and reply.ack_seq == 1
    # a stale agent is told even when it did not ask for an answer
    (reply,) = _stream(coord, "node-a", epoch=7, want_ack=False)
    assert "epoch 7 is stale" in reply.fenced


def test_heartbeats_are_answered_only_when_asked_or_with_something_to_deliver(coord, client):
    _register(coord, "node-a")
    assert _stream(coord, "node-a", epoch=1, beats=3, want_ack=False) == []
    replies = _stream(coord, "node-a", epoch=1, beats=2, want_ack=True)
    assert [r.ack_seq for r in replies] == [1, 2]
    assert all(r.received_at > 0 for r in replies)
    assert client.stats().heartbeats == 5


def test_silent_node_goes_suspect_then_dead_then_comes_back_with_a_new_epoch(coord, client):
    _register(coord, "node-a")
    status = lambda: client.list_nodes()[0].status  # noqa: E731
    wait_for(lambda: status() == "SUSPECT", 5, "SUSPECT")
    wait_for(lambda: status() == "DEAD", 5, "DEAD")
    (reply,) = _stream(coord, "node-a", epoch=1)
    assert "stale" in reply.fenced  # a dead epoch may not report
    assert _register(coord, "node-a", epoch=1) == 2
    assert status() == "ALIVE"
    reasons = [e.reason for e in client.list_events(subject="node-a")]
    assert reasons[0] == "registered (epoch 1)" and reasons[-1] == "registered again (epoch 2)"
    assert any(r.startswith("no heartbeat for") for r in reasons)


def test_drain_quarantine_undrain_and_unknown_node(coord, client):
    _register(coord, "node-a")
    assert client.set_node_state("node-a", "drain").status == "DRAINING"
    node = client.set_node_state("node-a", "quarantine", "xid 79")
    assert (node.status, node.status_reason) == ("QUARANTINED", "xid 79")
    assert client.set_node_state("node-a", "undrain").status == "ALIVE"
    before = _revision(client)
    with pytest.raises(NotFound, match="no node 'node-z'"):
        client.set_node_state("node-z", "drain")
    with pytest.raises(CoordinatorError, match="unknown node action 'reboot'"):
        client.set_node_state("node-a", "reboot")
    assert _revision(client) == before


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"entrypoint": ""}, "entrypoint is empty"),
        ({"nproc_per_node": 0}, "nproc_per_node is 0"),
        ({"nodes_min": 0}, "nodes_min is 0"),
        ({"nodes_min": 3, "nodes_max": 2}, "nodes_max 2 < nodes_min 3"),
        ({"name": "bad name"}, "name 'bad name' is not valid"),
        ({"max_restarts": -1}, "max_restarts is -1"),
    ],
)
def test_bad_job_specs_are_rejected_before_anything_is_stored(client, fields, needle):
    before = _revision(client)
    with pytest.raises(CoordinatorError, match=needle) as info:
        client.submit_job(_job(**fields))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert _revision(client) == before and client.list_jobs() == []


def test_a_job_bigger_than_the_cell_is_refused_with_reasons_and_not_recorded(coord, client):
    _register(coord, "node-a", slots=2)
    _register(coord, "node-b", slots=1)
    client.set_node_state("node-b", "quarantine", "ecc errors")
    before = _revision(client)
    with pytest.raises(CoordinatorError) as info:
        client.submit_job(_job(nproc_per_node=2, nodes_min=2, nodes_max=2))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "node-b" in str(info.value) and "quarantined" in str(info.value)
    assert _revision(client) == before and client.list_jobs() == []


def test_dry_run_prints_the_plan_and_stores_nothing(coord, client):
    _register(coord, "node-a")
    _register(coord, "node-b")
    before = _revision(client)
    reply = client.submit_job(_job(nodes_min=2, nodes_max=2), dry_run=True)
    assert "node-a" in reply.placement and "node-b" in reply.placement
    assert _revision(client) == before and client.list_jobs() == []


def test_submitted_job_is_assigned_through_the_heartbeat_stream(coord, client):
    _register(coord, "node-a")
    reply = client.submit_job(_job())
    assert reply.job.status == "PLACED" and list(reply.job.nodes) == ["node-a"]
    # work is delivered without asking for an answer; then a quiet beat gets none
    (message,) = _stream(coord, "node-a", epoch=1, beats=2, want_ack=False)
    assert [a.job_id for a in message.assign] == [reply.job.job_id]
    assert message.ack_seq == 1
    cancelled = client.cancel_job(reply.job.job_id)
    assert cancelled.status == "CANCELLED"
    (message,) = _stream(coord, "node-a", epoch=1, want_ack=False)
    assert list(message.stop_jobs) == [reply.job.job_id]
    detail = client.get_job(reply.job.job_id)
    assert [e.to_state for e in detail.events] == ["PENDING", "PLACED", "CANCELLED"]


def test_unknown_job_ids_give_not_found(client):
    for call in (client.get_job, client.cancel_job):
        with pytest.raises(NotFound, match="no job 'nope-1'"):
            call("nope-1")
    with pytest.raises(NotFound):
        list(client.job_logs("nope-1"))


def test_unknown_status_filter_names_the_allowed_values(client):
    with pytest.raises(CoordinatorError, match="RUNNING"):
        client.list_jobs(status="running-ish")


def test_unreachable_coordinator_says_how_to_start_one():
    with (
        CoordinatorClient("127.0.0.1:1", timeout_s=2) as c,
        pytest.raises(CoordinatorUnavailable, match="infermesh coordinator start"),
    ):
        c.list_nodes()


def test_rendezvous_closes_when_max_nodes_joined_and_orders_by_address(coord):
    async def join(node: str, addr: str):
        channel, stub = async_stub(coord.address)
        try:
            request = pb.JoinRequest(
                run_id="ext-1",
                node_id=node,
                addr=addr,
                port=1234,
                nodes_min=2,
                nodes_max=2,
                timeout_s=10,
            )
            return await stub.RendezvousJoin(request)
        finally:
            await channel.close()

    async def both():
        import asyncio

        return await asyncio.gather(join("b", "10.0.0.2"), join("a", "10.0.0.1"))

    t0 = time.monotonic()
    rb, ra = coord.run(both())
    assert time.monotonic() - t0 < 5
    assert (ra.group_rank, rb.group_rank) == (0, 1)
    assert ra.master_addr == rb.master_addr == "10.0.0.1" and ra.round == 1
    assert list(ra.nodes) == ["a", "b"]


def _report(coord, node: str, report: pb.JobReport) -> None:
    """One heartbeat of ``node`` (epoch 1) carrying ``report``, as its agent sends it."""

    async def go():
        channel, stub = async_stub(coord.address)

        async def beats():
            yield pb.AgentHeartbeat(node_id=node, epoch=1, seq=1, jobs=[report], want_ack=True)

        try:
            return [m async for m in stub.Heartbeat(beats())]
        finally:
            await channel.close()

    coord.run(go())


def _join(coord, job_id: str, node: str, addr: str):
    """RendezvousJoin as node ``node``'s launcher would call it (a coroutine)."""

    async def go():
        channel, stub = async_stub(coord.address)
        try:
            request = pb.JoinRequest(
                run_id=job_id, node_id=node, addr=addr, port=1234, nodes_min=2, nodes_max=3
            )
            return await stub.RendezvousJoin(request, timeout=20)
        finally:
            await channel.close()

    return go()


def test_a_job_succeeds_with_its_round_while_an_added_node_is_still_joining(coord, client):
    """The round's members finish before a node added mid-run joins: the job succeeds and
    the late node is stopped, its join answered (not left waiting for a round)."""
    import asyncio

    _register(coord, "node-a", slots=1)
    _register(coord, "node-b", slots=1)
    job = client.submit_job(_job(nodes_min=2, nodes_max=3)).job

    async def first_round():
        return await asyncio.gather(
            _join(coord, job.job_id, "node-a", "10.0.0.1"),
            _join(coord, job.job_id, "node-b", "10.0.0.2"),
        )

    assert [r.round for r in coord.run(first_round())] == [1, 1]
    _register(coord, "node-c", slots=1)
    assert list(client.get_job(job.job_id).job.nodes) == ["node-a", "node-b", "node-c"]
    late = asyncio.run_coroutine_threadsafe(
        _join(coord, job.job_id, "node-c", "10.0.0.3"), coord.loop
    )
    rendezvous = coord.coordinator.jobs.rendezvous
    wait_for(lambda: "node-c" in rendezvous.run(job.job_id).waiting, 10, "node-c waiting")

    done = pb.JobReport(job_id=job.job_id, state="succeeded", step=100)
    _report(coord, "node-a", done)
    assert client.get_job(job.job_id).job.status == "RUNNING"
    _report(coord, "node-b", done)
    final = client.get_job(job.job_id)
    assert final.job.status == "SUCCEEDED" and final.job.world_size == 2
    with pytest.raises(grpc.aio.AioRpcError) as info:
        late.result(10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "closed" in (info.value.details() or "")
    (message,) = _stream(coord, "node-c", epoch=1, want_ack=False)
    assert job.job_id in message.stop_jobs


def test_placement_and_rendezvous_are_traced(coord, client):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from infermesh.obs.tracing import add_exporter

    exporter = InMemorySpanExporter()
    add_exporter(exporter)
    _register(coord, "node-a")
    job = client.submit_job(_job()).job
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["placement.plan"].attributes["job"] == job.job_id
    assert spans["placement.plan"].attributes["nodes_chosen"] == 1
    assert spans["coordinator.submit"].attributes["job"] == job.job_id


def test_steps_per_second_is_measured_over_a_window_not_between_two_nodes_reports(
    coord, client, monkeypatch
):
    """Every node reports the job's step a few ms apart; a rate over that gap would read
    thousands of steps/s."""
    from infermesh.control import jobs

    monkeypatch.setattr(jobs, "RATE_WINDOW_S", 0.3)
    for node in ("node-a", "node-b"):
        _register(coord, node, slots=1)
    job = client.submit_job(_job(nodes_min=2, nodes_max=2)).job

    def report(node: str, step: int) -> None:
        _report(coord, node, pb.JobReport(job_id=job.job_id, state="running", step=step))

    t0 = time.monotonic()
    report("node-a", 10)
    report("node-b", 11)  # a step later, milliseconds apart
    assert client.get_job(job.job_id).job.steps_per_s == 0  # no window has passed yet
    wait_for(lambda: time.monotonic() - t0 > 0.35, 2, "the rate window")
    report("node-a", 14)
    rate = client.get_job(job.job_id).job.steps_per_s
    assert 0 < rate < 4 / 0.3, rate  # 4 steps over at least 0.3 s
