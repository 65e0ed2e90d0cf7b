"""A coordinator with certificates on loopback: who gets in, and that refused callers write
nothing (the store revision stays where it was)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from infermesh.client.coordinator import (
    AccessDenied,
    CoordinatorClient,
    CoordinatorUnavailable,
    async_stub,
    pb,
)
from infermesh.control.auth import SecurityConfig
from infermesh.core.errors import UsageError
from infermesh.security.ca import init_ca, write_bundle
from infermesh.security.identity import SpiffeId
from infermesh.security.tls import ClientTls, TlsFiles
from tests.cell.inproc import ThreadedCoordinator
from tests.security.pki import Pki, client


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


@pytest.fixture
def coord(pki):
    c = ThreadedCoordinator(
        security=SecurityConfig(tls=pki.coordinator(), admins=("user:root",)),
        suspect_after_s=2.0,
        dead_after_s=5.0,
    )
    yield c
    c.close()


@pytest.fixture
def root(coord, pki):
    with CoordinatorClient(coord.address, tls=client(pki.user("root"))) as c:
        yield c


def _spec(node_id: str) -> pb.NodeSpec:
    return pb.NodeSpec(node_id=node_id, hostname="h", slots=2, no_gpu_reason="test", cpus=2)


def _register(coord, tls: ClientTls | None, node_id: str) -> pb.RegisterResponse:
    async def go():
        channel, stub = async_stub(coord.address, tls=tls)
        try:
            return await stub.Register(pb.RegisterRequest(spec=_spec(node_id)), timeout=5)
        finally:
            await channel.close()

    return coord.run(go())


def _heartbeats(coord, tls: ClientTls, beats: list[pb.AgentHeartbeat]) -> list:
    async def go():
        channel, stub = async_stub(coord.address, tls=tls)
        try:

            async def requests():
                for beat in beats:
                    yield beat

            return [m async for m in stub.Heartbeat(requests(), timeout=5)]
        finally:
            await channel.close()

    return coord.run(go())


def _code(coord, call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        call()
    return info.value.code()


def test_node_certificate_registers_its_own_node_and_the_call_is_audited(coord, pki, root):
    assert _register(coord, client(pki.node("n1")), "n1").epoch == 1
    (node,) = root.list_nodes()
    assert node.spec.node_id == "n1"
    (record,) = root.call("ListAudit", pb.ListAuditRequest()).records
    assert (record.principal, record.method, record.target, record.result) == (
        "node:n1",
        "Register",
        "n1",
        "OK",
    )
    assert record.source == "cert" and record.ts > time.time() - 60


def test_whoami_reports_the_certificate_identity(root):
    me = root.call("WhoAmI", pb.WhoAmIRequest())
    assert me.principal == "user:root"
    assert me.spiffe_id == "spiffe://example.org/cell/local/user/root"
    assert list(me.roles) == ["admin"] and me.tenant == "root"


def test_plaintext_client_is_refused_and_writes_nothing(coord, root):
    before = root.stats().store_revision
    assert _code(coord, lambda: _register(coord, None, "n1")) == grpc.StatusCode.UNAVAILABLE
    with CoordinatorClient(coord.address, credentials=None) as plain:
        plain.timeout_s = 3
        with pytest.raises(CoordinatorUnavailable):
            plain.stats()
    assert root.stats().store_revision == before
    assert root.list_nodes() == []


def test_tls_client_without_certificate_fails_the_handshake(coord, pki, root):
    before = root.stats().store_revision
    creds = grpc.ssl_channel_credentials(pki.ca.cert_pem)
    with (
        CoordinatorClient(coord.address, credentials=creds, timeout_s=3) as anon,
        pytest.raises(CoordinatorUnavailable),
    ):
        anon.stats()
    assert root.stats().store_revision == before


def test_certificate_from_another_ca_is_refused_and_writes_nothing(coord, tmp_path, root):
    other = init_ca(tmp_path / "other-ca", "example.org")
    bundle = other.issue(SpiffeId.node("example.org", "local", "n1"))
    out = write_bundle(tmp_path / "rogue", bundle)
    rogue = client(TlsFiles(out / "ca.pem", out / "cert.pem", out / "key.pem"))
    before = root.stats().store_revision
    code = _code(coord, lambda: _register(coord, rogue, "n1"))
    assert code == grpc.StatusCode.UNAVAILABLE
    with (
        CoordinatorClient(coord.address, tls=rogue, timeout_s=3) as c,
        pytest.raises(CoordinatorUnavailable, match="TLS handshake"),
    ):
        c.stats()
    assert root.stats().store_revision == before
    assert root.list_nodes() == []


def test_expired_certificate_is_refused_and_writes_nothing(coord, pki, root):
    expired = client(pki.expired_user("late"))
    before = root.stats().store_revision
    with (
        CoordinatorClient(coord.address, tls=expired, timeout_s=3) as c,
        pytest.raises(CoordinatorUnavailable),
    ):
        c.call("Grant", pb.GrantRequest(subject="user:late", role="admin"))
    assert root.stats().store_revision == before


def test_node_certificate_cannot_register_another_node(coord, pki, root):
    before = root.stats().store_revision
    code = _code(coord, lambda: _register(coord, client(pki.node("n1")), "n2"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert root.stats().store_revision == before
    assert root.list_nodes() == []


def test_node_certificate_cannot_heartbeat_for_another_node(coord, pki, root):
    n1 = client(pki.node("n1"))
    n2 = client(pki.node("n2"))
    _register(coord, n1, "n1")
    epoch = _register(coord, n2, "n2").epoch
    before = root.stats().store_revision
    beat = pb.AgentHeartbeat(node_id="n2", epoch=epoch, seq=1)
    beat.jobs.append(pb.JobReport(job_id="x", state="failed"))
    beat.logs.append(pb.LogLine(job_id="x", text="forged"))
    code = _code(coord, lambda: _heartbeats(coord, n1, [beat]))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert root.stats().store_revision == before
    assert root.stats().heartbeats == 0


def test_node_heartbeats_for_itself_over_mtls(coord, pki, root):
    n1 = client(pki.node("n1"))
    epoch = _register(coord, n1, "n1").epoch
    beat = pb.AgentHeartbeat(node_id="n1", epoch=epoch, seq=1, want_ack=True)
    replies = _heartbeats(coord, n1, [beat])
    assert [r.ack_seq for r in replies] == [1]
    assert root.stats().heartbeats == 1


def test_certificate_of_another_cell_is_unauthenticated(coord, pki, root):
    stranger = client(pki.node("n1", cell="other"))
    before = root.stats().store_revision
    code = _code(coord, lambda: _register(coord, stranger, "n1"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert root.stats().store_revision == before


def test_node_certificate_is_not_a_user_role(coord, pki):
    with CoordinatorClient(coord.address, tls=client(pki.node("n1"))) as node:
        assert node.list_nodes() == []  # nodes may read
        with pytest.raises(AccessDenied, match=r"needs job\.submit"):
            node.submit_job(pb.JobSpec(name="x", entrypoint="/bin/true", nproc_per_node=1))


def test_server_certificate_rotation_needs_no_restart(coord, pki, root):
    old = coord.coordinator.server_tls
    assert old is not None and old.reloads == 0
    serial = _server_serial(coord, pki)
    pki.coordinator()  # a new bundle over the same files
    with CoordinatorClient(coord.address, tls=client(pki.user("root"))) as fresh:
        assert fresh.stats().cell == "local"
    assert old.reloads == 1
    assert _server_serial(coord, pki) != serial


def _server_serial(coord, pki) -> int:
    import ssl

    from cryptography import x509

    host, port = coord.address.rsplit(":", 1)
    pem = ssl.get_server_certificate((host, int(port)), timeout=5)
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def test_client_notices_rotated_files(pki):
    files = pki.node("n9")
    tls = client(files)
    tls.channel_credentials()
    assert not tls.changed()
    time.sleep(0.01)  # distinct mtime_ns on coarse file systems
    pki.node("n9")
    assert tls.changed()


def test_plaintext_off_loopback_needs_insecure():
    with pytest.raises(UsageError, match="--insecure"):
        SecurityConfig().check("0.0.0.0")
    SecurityConfig(insecure=True).check("0.0.0.0")
    SecurityConfig().check("127.0.0.1")
    SecurityConfig().check("localhost")


def test_contradictory_security_settings_are_refused(pki):
    files = pki.coordinator()
    with pytest.raises(UsageError, match="--insecure conflicts"):
        SecurityConfig(tls=files, insecure=True).check("127.0.0.1")
    with pytest.raises(UsageError, match="--admin needs TLS"):
        SecurityConfig(admins=("user:a",)).check("127.0.0.1")
    with pytest.raises(UsageError, match="needs --jwt-issuer"):
        SecurityConfig(tls=files, token_port=0).check("127.0.0.1")
    with pytest.raises(UsageError, match="--token-port needs TLS"):
        SecurityConfig(token_port=0).check("127.0.0.1")


def test_insecure_coordinator_keeps_working_without_certificates():
    c = ThreadedCoordinator()
    try:
        with CoordinatorClient(c.address) as plain:
            me = plain.call("WhoAmI", pb.WhoAmIRequest())
            assert (me.principal, me.source, list(me.roles)) == ("anonymous", "insecure", ["admin"])
            before = plain.stats().store_revision
            assert plain.call("ListAudit", pb.ListAuditRequest()).records == []
            assert plain.stats().store_revision == before
    finally:
        c.close()


def test_agent_with_node_bundle_registers_over_mtls(coord, pki, root, tmp_path):
    from infermesh.agent.agent import NodeAgent

    agent = NodeAgent(
        coordinator=coord.address,
        node_id="n7",
        workdir=tmp_path / "n7",
        slots=1,
        tls=client(pki.node("n7")),
    )

    async def run_once():
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.registered.wait(), 10)
        agent.stop()
        await task

    coord.run(run_once())
    assert [n.spec.node_id for n in root.list_nodes()] == ["n7"]
