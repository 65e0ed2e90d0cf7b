"""Roles, job ownership, grants that change without a restart, quotas and the audit log, on a
coordinator with certificates (real mTLS on loopback)."""

from __future__ import annotations

import grpc
import pytest
from typer.testing import CliRunner

from infermesh.cli.security import audit_app, quota_app, rbac_app
from infermesh.client.coordinator import AccessDenied, CoordinatorClient, CoordinatorError, pb
from infermesh.control.auth import RULES, SecurityConfig
from infermesh.control.policy import Policy
from infermesh.core.errors import UsageError
from infermesh.security.rbac import ROLE_PERMISSIONS, Permission, Role
from tests.cell.cellproc import wait_for
from tests.security.pki import Pki, client
from tests.security.test_mtls import _register

runner = CliRunner()


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


@pytest.fixture
def coord(pki):
    from tests.cell.inproc import ThreadedCoordinator

    c = ThreadedCoordinator(security=SecurityConfig(tls=pki.coordinator(), admins=("user:root",)))
    _register(c, client(pki.node("n1")), "n1")
    _register(c, client(pki.node("n2")), "n2")
    yield c
    c.close()


@pytest.fixture
def users(coord, pki):
    """root (admin by flag) grants the other users their roles."""
    opened: dict[str, CoordinatorClient] = {}

    def get(name: str) -> CoordinatorClient:
        if name not in opened:
            opened[name] = CoordinatorClient(coord.address, tls=client(pki.user(name)))
        return opened[name]

    root = get("root")
    for subject, role, tenant in [
        ("user:vera", "viewer", ""),
        ("user:sam", "submitter", "team-a"),
        ("user:sue", "submitter", "team-b"),
        ("user:otto", "operator", ""),
    ]:
        root.call("Grant", pb.GrantRequest(subject=subject, role=role, tenant=tenant))
    yield get
    for c in opened.values():
        c.close()


def _job(**fields) -> pb.JobSpec:
    base = dict(name="t", entrypoint="/bin/true", nproc_per_node=1, nodes_min=1, nodes_max=1)
    base.update(fields)
    return pb.JobSpec(**base)


def _denied(call) -> str:
    with pytest.raises(AccessDenied) as info:
        call()
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    return str(info.value)


def test_every_rpc_has_an_access_rule():
    methods = set(pb.DESCRIPTOR.services_by_name["Coordinator"].methods_by_name)
    assert methods == set(RULES)


def test_roles_nest_as_documented():
    viewer, submitter, operator, admin = (
        ROLE_PERMISSIONS[r] for r in (Role.VIEWER, Role.SUBMITTER, Role.OPERATOR, Role.ADMIN)
    )
    assert viewer < submitter < admin and viewer < operator < admin
    assert Permission.NODE_REPORT not in admin and Permission.JOB_CANCEL_ANY not in submitter


def test_viewer_reads_but_cannot_submit_or_drain(users):
    vera, root = users("vera"), users("root")
    assert {n.spec.node_id for n in vera.list_nodes()} == {"n1", "n2"}
    before = root.stats().store_revision
    assert "needs job.submit" in _denied(lambda: vera.submit_job(_job()))
    assert "needs node.admin" in _denied(lambda: vera.set_node_state("n1", "drain", "x"))
    assert "rbac grant user:vera" in _denied(lambda: vera.set_node_state("n1", "drain", "x"))
    assert root.stats().store_revision == before
    assert root.call("ListAudit", pb.ListAuditRequest(principal="user:vera")).records == []


def test_submitter_jobs_carry_its_tenant_and_foreign_tenants_are_refused(users):
    sam = users("sam")
    job = sam.submit_job(_job()).job
    assert job.spec.tenant == "team-a"
    assert "submits for tenant 'team-a'" in _denied(lambda: sam.submit_job(_job(tenant="team-b")))


def test_submitter_cannot_cancel_another_tenants_job(users):
    sam, sue, otto = users("sam"), users("sue"), users("otto")
    job = sam.submit_job(_job()).job
    before = users("root").stats().store_revision
    message = _denied(lambda: sue.cancel_job(job.job_id))
    assert "belongs to tenant 'team-a'" in message
    assert users("root").stats().store_revision == before
    assert sam.get_job(job.job_id).job.status != "CANCELLED"
    assert sam.cancel_job(job.job_id).status == "CANCELLED"  # its own tenant may
    other = sam.submit_job(_job()).job
    assert otto.cancel_job(other.job_id).status == "CANCELLED"  # an operator may cancel any


def test_operator_drains_and_the_audit_log_says_who(users):
    otto, root = users("otto"), users("root")
    assert otto.set_node_state("n1", "drain", "maintenance").status == "DRAINING"
    records = root.call("ListAudit", pb.ListAuditRequest(method="SetNodeState")).records
    (record,) = records
    assert (record.principal, record.target, record.result) == ("user:otto", "n1 drain", "OK")
    with pytest.raises(CoordinatorError):
        otto.set_node_state("nope", "drain", "")
    failed = root.call("ListAudit", pb.ListAuditRequest(method="SetNodeState")).records[-1]
    assert (failed.result, failed.target) == ("NOT_FOUND", "nope drain")
    assert "no node 'nope'" in failed.detail


def test_revoked_grant_takes_effect_without_restart(users):
    sam, root = users("sam"), users("root")
    sam.submit_job(_job())
    assert root.call("Revoke", pb.GrantRequest(subject="user:sam", role="submitter")).removed
    _denied(lambda: sam.submit_job(_job()))
    assert "(no role)" in _denied(lambda: sam.list_jobs())
    root.call("Grant", pb.GrantRequest(subject="user:sam", role="viewer"))
    assert sam.list_jobs()


def test_grant_written_to_the_store_by_another_replica_applies_through_the_watch(coord, users):
    vera = users("vera")
    _denied(lambda: vera.submit_job(_job()))
    policy: Policy = coord.coordinator.policy
    changes = policy.changes
    record = pb.GrantRecord(subject="user:vera", role="submitter", tenant="team-v")

    async def write():  # what a second coordinator on the same etcd would do
        await coord.coordinator.records.put("rbac", "user:vera/submitter", record)

    coord.run(write())
    wait_for(lambda: policy.changes > changes, timeout_s=5, what="the watch to apply the grant")
    assert vera.submit_job(_job()).job.spec.tenant == "team-v"

    async def remove():
        await coord.coordinator.records.delete("rbac", "user:vera/submitter")

    coord.run(remove())
    wait_for(lambda: policy.changes > changes + 1, timeout_s=5, what="the watch to revoke")
    _denied(lambda: vera.submit_job(_job()))


def test_only_admins_change_grants_and_flag_admins_cannot_be_revoked(users):
    otto, root = users("otto"), users("root")
    _denied(lambda: otto.call("Grant", pb.GrantRequest(subject="user:otto", role="admin")))
    grants = otto.call("ListGrants", pb.ListGrantsRequest()).grants  # operators may read
    assert ("user:root", "admin", "flag") in [(g.subject, g.role, g.source) for g in grants]
    with pytest.raises(CoordinatorError, match="--admin flag"):
        root.call("Revoke", pb.GrantRequest(subject="user:root", role="admin"))


@pytest.mark.parametrize(
    ("subject", "role", "needle"),
    [
        ("alice", "viewer", "subject 'alice' is not valid"),
        ("user:bob", "god", "unknown role 'god'"),
        ("user:bob", "node", "unknown role 'node'"),
    ],
)
def test_bad_grants_are_refused_and_write_nothing(users, subject, role, needle):
    root = users("root")
    before = root.stats().store_revision
    with pytest.raises(CoordinatorError, match=needle) as info:
        root.call("Grant", pb.GrantRequest(subject=subject, role=role))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    audit = root.call("ListAudit", pb.ListAuditRequest(method="Grant")).records[-1]
    assert audit.result == "INVALID_ARGUMENT"
    assert root.stats().store_revision == before + 1  # the audit record only


def test_job_quota_refuses_a_third_concurrent_job(users):
    sam, root = users("sam"), users("root")
    root.call("SetQuota", pb.Quota(tenant="team-a", max_jobs=2))
    sam.submit_job(_job())
    sam.submit_job(_job())
    with pytest.raises(CoordinatorError) as info:
        sam.submit_job(_job())
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tenant team-a has 2 unfinished job(s)" in str(info.value)
    assert "quota allows 2" in str(info.value)
    users("sue").submit_job(_job())  # another tenant is not limited
    (usage,) = root.call("ListQuotas", pb.ListQuotasRequest()).quotas
    assert (usage.quota.tenant, usage.jobs) == ("team-a", 2)


def test_slot_quota_caps_placement_and_keeps_the_next_job_pending(users):
    sam, root = users("sam"), users("root")
    root.call("SetQuota", pb.Quota(tenant="team-a", max_slots=2))
    with pytest.raises(CoordinatorError, match=r"needs at least 4 slot\(s\)"):
        sam.submit_job(_job(nproc_per_node=2, nodes_min=2, nodes_max=2))
    wide = sam.submit_job(_job(nproc_per_node=1, nodes_min=1, nodes_max=0)).job
    assert len(sam.get_job(wide.job_id).job.nodes) == 2  # both nodes, 2 slots: at the cap
    waiting = sam.submit_job(_job()).job
    detail = sam.get_job(waiting.job_id).job
    assert detail.status == "PENDING"
    assert "quota: tenant team-a holds 2 of its 2 slot(s)" in detail.message
    sam.cancel_job(wide.job_id)
    assert sam.get_job(waiting.job_id).job.status == "PLACED"


def test_quota_validation(coord):
    policy: Policy = coord.coordinator.policy
    with pytest.raises(UsageError, match="limits must be >= 0"):
        coord.run(policy.set_quota(pb.Quota(tenant="t", max_jobs=-1)))
    with pytest.raises(UsageError, match="tenant is empty"):
        coord.run(policy.set_quota(pb.Quota(max_jobs=1)))


def test_cli_grant_ls_revoke_quota_and_audit(coord, pki, users):
    root_dir = str(pki.user("root").cert.parent)
    conn = ["--coordinator", coord.address, "--tls-dir", root_dir]
    out = runner.invoke(rbac_app, ["grant", "user:zoe", "submitter", "--tenant", "z", *conn])
    assert out.exit_code == 0, out.output
    assert "granted submitter to user:zoe (tenant z)" in out.output
    listing = runner.invoke(rbac_app, ["ls", *conn]).output
    assert "user:zoe" in listing and "user:root" in listing and "flag" in listing
    assert runner.invoke(rbac_app, ["revoke", "user:zoe", "submitter", *conn]).exit_code == 0
    again = runner.invoke(rbac_app, ["revoke", "user:zoe", "submitter", *conn])
    assert again.exit_code == 1 and "nothing changed" in again.output
    assert runner.invoke(quota_app, ["set", "z", "--max-jobs", "3", *conn]).exit_code == 0
    assert "0/3" in runner.invoke(quota_app, ["ls", *conn]).output
    audit = runner.invoke(audit_app, ["ls", "--principal", "user:root", *conn]).output
    assert "Grant" in audit and "Revoke" in audit and "SetQuota" in audit
    vera_dir = str(pki.user("vera").cert.parent)
    refused = runner.invoke(
        rbac_app,
        ["grant", "user:x", "admin", "--coordinator", coord.address, "--tls-dir", vera_dir],
    )
    assert refused.exit_code == 1 and "may not call Grant" in refused.output
