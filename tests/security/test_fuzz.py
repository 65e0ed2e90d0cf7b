"""Property tests of the coordinator's request handling with random and malformed input.

Bounded (a fixed number of examples, no deadline per example) so that CI time stays small.
Properties: the server never answers INTERNAL or UNKNOWN (what a crash looks like), a
refused request writes nothing (same store revision), and the server still answers after.
"""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermesh.client.coordinator import CoordinatorClient, async_stub, pb
from infermesh.control.auth import RULES, SecurityConfig
from tests.cell.inproc import ThreadedCoordinator
from tests.security.pki import Pki, client

SERVICE = "/infermesh.v1.Coordinator/"
CRASH = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
STREAMING = {"Heartbeat", "JobLogs"}
UNARY = sorted(set(RULES) - STREAMING - {"RendezvousJoin"})  # Join waits for a round
MUTATING = sorted(m for m, rule in RULES.items() if rule.audit and m not in STREAMING)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def plain():
    c = ThreadedCoordinator(suspect_after_s=3600, dead_after_s=7200)  # no liveness changes

    async def register():
        channel, stub = async_stub(c.address)
        spec = pb.NodeSpec(node_id="n1", hostname="h", slots=2, no_gpu_reason="t", cpus=2)
        await stub.Register(pb.RegisterRequest(spec=spec))
        await channel.close()

    c.run(register())
    yield c
    c.close()


@pytest.fixture(scope="module")
def plain_channel(plain):
    channel = grpc.insecure_channel(plain.address)
    yield channel
    channel.close()


def _raw(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    call = channel.unary_unary(SERVICE + method)
    try:
        call(payload, timeout=5)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _revision(address: str, **kw) -> int:
    with CoordinatorClient(address, **kw) as c:
        return c.stats().store_revision


@FUZZ
@given(method=st.sampled_from(UNARY), payload=st.binary(max_size=256))
def test_random_bytes_never_crash_and_refusals_write_nothing(plain, plain_channel, method, payload):
    before = _revision(plain.address)
    code = _raw(plain_channel, method, payload)
    assert code not in CRASH, (method, payload)
    if code != grpc.StatusCode.OK:
        assert _revision(plain.address) == before, (method, payload, code)


floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text(max_size=40)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@st.composite
def job_specs(draw) -> pb.JobSpec:
    return pb.JobSpec(
        name=draw(texts),
        entrypoint=draw(st.sampled_from(["", "/bin/true", "-m x", "../x"]) | texts),
        args=draw(st.lists(texts, max_size=3)),
        nproc_per_node=draw(ints),
        nodes_min=draw(ints),
        nodes_max=draw(ints),
        max_restarts=draw(ints),
        constraints=draw(st.dictionaries(texts, texts, max_size=2)),
        cell=draw(st.sampled_from(["", "local", "other"]) | texts),
        tenant=draw(texts),
    )


@FUZZ
@given(
    spec=job_specs(),
    status=st.sampled_from(["", "RUNNING", "bogus"]) | texts,
    limit=ints,
    node=st.sampled_from(["n1", ""]) | texts,
    action=st.sampled_from(["drain", "undrain", "quarantine", ""]) | texts,
    age=floats,
    subject=texts,
)
def test_random_messages_never_crash(plain, spec, status, limit, node, action, age, subject):
    with CoordinatorClient(plain.address, timeout_s=5) as c:
        before = c.stats().store_revision
        calls = [
            ("SubmitJob", pb.SubmitJobRequest(spec=spec, dry_run=True)),
            ("ListJobs", pb.ListJobsRequest(status=status, limit=limit)),
            ("GetNode", pb.GetNodeRequest(node_id=node, max_age_s=age)),
            ("ListEvents", pb.ListEventsRequest(subject=subject, limit=limit)),
            ("GetJob", pb.JobRequest(job_id=subject)),
            ("RendezvousState", pb.RendezvousRequest(run_id=subject, node_id=node)),
            ("ListAudit", pb.ListAuditRequest(principal=subject, limit=limit, since=age)),
        ]
        if node != "n1":  # a real drain is a legitimate state change
            calls.append(("SetNodeState", pb.SetNodeStateRequest(node_id=node, action=action)))
        for method, request in calls:
            try:
                c.call(method, request)
            except Exception as error:
                assert getattr(error, "code", None) not in CRASH, (method, request, error)
        assert c.stats().store_revision == before


@FUZZ
@given(frames=st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_random_heartbeat_frames_never_crash(plain, plain_channel, frames):
    before = _revision(plain.address)
    call = plain_channel.stream_stream(SERVICE + "Heartbeat")
    try:
        list(call(iter(frames), timeout=5))
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
    assert code not in CRASH, frames
    assert _revision(plain.address) == before


@FUZZ
@given(
    beat=st.builds(
        pb.AgentHeartbeat,
        node_id=st.sampled_from(["n1", "ghost"]) | texts,
        epoch=st.integers(min_value=-5, max_value=5),
        seq=ints,
    )
)
def test_random_heartbeat_messages_never_crash(plain, beat):
    async def go():
        channel, stub = async_stub(plain.address)
        try:

            async def one():
                yield beat

            return [m async for m in stub.Heartbeat(one(), timeout=5)]
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await channel.close()

    result = plain.run(go())
    assert not isinstance(result, grpc.StatusCode) or result not in CRASH, (beat, result)


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    pki = Pki(tmp_path_factory.mktemp("pki"))
    security = SecurityConfig(tls=pki.coordinator(), admins=("user:root",))
    c = ThreadedCoordinator(security=security, suspect_after_s=3600, dead_after_s=7200)
    root = CoordinatorClient(c.address, tls=client(pki.user("root")))
    root.call("Grant", pb.GrantRequest(subject="user:vera", role="viewer"))
    viewer_tls = client(pki.user("vera"))
    creds = viewer_tls.channel_credentials()
    channel = grpc.secure_channel(c.address, creds)
    yield c, root, channel
    channel.close()
    root.close()
    c.close()


@FUZZ
@given(method=st.sampled_from(MUTATING), payload=st.binary(max_size=256))
def test_viewer_random_bytes_to_mutating_calls_are_refused_and_write_nothing(
    secure, method, payload
):
    _, root, channel = secure
    before = root.stats().store_revision
    code = _raw(channel, method, payload)
    assert code in {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}, code
    assert root.stats().store_revision == before


def test_the_fuzzers_found_no_lasting_damage(plain, secure):
    with CoordinatorClient(plain.address) as c:
        assert c.stats().cell == "local"
        assert math.isfinite(c.stats().uptime_s)
    assert secure[1].stats().cell == "local"


def test_every_coordinator_method_has_an_access_rule():
    from infermesh.client.generated import coordinator_pb2 as pb

    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["Coordinator"].methods}
    assert methods - set(RULES) == set(), "add a rule in infermesh/control/auth.py RULES"
