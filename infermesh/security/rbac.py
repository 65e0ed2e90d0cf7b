"""Roles and permissions of a cell (pure: no store, no gRPC).

============  ===========================================================================
role          may
============  ===========================================================================
viewer        read nodes, jobs, logs, events, stats (``read``)
submitter     viewer + submit jobs, cancel its own tenant's jobs, join rendezvous
operator      viewer + drain/undrain/quarantine nodes, cancel any job, read grants, quotas
              and the audit log, join rendezvous
admin         everything: operator + grant and revoke roles, set quotas, submit for any tenant
node          (built in, held by every node certificate of the cell) register and heartbeat
              for its own node id, join rendezvous, read
============  ===========================================================================

Roles are granted to *subjects*: ``user:<name>``, ``node:<id>`` or ``group:<name>`` (a group
a JWT lists). :func:`check_subject` and :func:`check_role` validate user input.
"""

from __future__ import annotations

import enum

from infermesh.core.errors import UsageError
from infermesh.security.identity import NAME_RE, USER_NAME_RE

__all__ = [
    "GRANTABLE_ROLES",
    "ROLE_PERMISSIONS",
    "Permission",
    "Role",
    "check_role",
    "check_subject",
    "permissions_of",
]


class Permission(str, enum.Enum):
    READ = "read"
    NODE_REPORT = "node.report"  # Register and Heartbeat, own node id only
    NODE_ADMIN = "node.admin"  # drain, undrain, quarantine
    JOB_SUBMIT = "job.submit"
    JOB_SUBMIT_ANY_TENANT = "job.submit.any-tenant"
    JOB_CANCEL_OWN = "job.cancel.own"
    JOB_CANCEL_ANY = "job.cancel.any"
    RENDEZVOUS = "rendezvous"
    POLICY_READ = "policy.read"  # grants and quotas
    POLICY_WRITE = "policy.write"
    AUDIT_READ = "audit.read"
    AUTHENTICATED = "authenticated"  # any known caller (WhoAmI)


class Role(str, enum.Enum):
    VIEWER = "viewer"
    SUBMITTER = "submitter"
    OPERATOR = "operator"
    ADMIN = "admin"
    NODE = "node"


P = Permission
_VIEWER = frozenset({P.READ, P.AUTHENTICATED})
_SUBMITTER = _VIEWER | {P.JOB_SUBMIT, P.JOB_CANCEL_OWN, P.RENDEZVOUS}
_OPERATOR = _VIEWER | {
    P.NODE_ADMIN,
    P.JOB_CANCEL_OWN,
    P.JOB_CANCEL_ANY,
    P.RENDEZVOUS,
    P.POLICY_READ,
    P.AUDIT_READ,
}
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: _VIEWER,
    Role.SUBMITTER: _SUBMITTER,
    Role.OPERATOR: _OPERATOR,
    Role.ADMIN: frozenset(set(Permission) - {P.NODE_REPORT}),
    Role.NODE: _VIEWER | {P.NODE_REPORT, P.RENDEZVOUS},
}
GRANTABLE_ROLES = (Role.ADMIN, Role.OPERATOR, Role.SUBMITTER, Role.VIEWER)
SUBJECT_KINDS = ("user", "node", "group")


def permissions_of(roles: set[Role] | frozenset[Role]) -> frozenset[Permission]:
    out: frozenset[Permission] = frozenset()
    for role in roles:
        out |= ROLE_PERMISSIONS[role]
    return out


def check_role(role: str) -> Role:
    """The grantable role named ``role``; UsageError listing the roles otherwise."""
    for known in GRANTABLE_ROLES:
        if known.value == role:
            return known
    raise UsageError(
        f"unknown role {role!r}; grantable roles: " + ", ".join(r.value for r in GRANTABLE_ROLES)
    )


def check_subject(subject: str) -> str:
    """``user:<name>``, ``node:<id>`` or ``group:<name>``; UsageError otherwise."""
    kind, sep, name = subject.partition(":")
    pattern = NAME_RE if kind == "node" else USER_NAME_RE
    if not sep or kind not in SUBJECT_KINDS or not pattern.match(name):
        raise UsageError(
            f"subject {subject!r} is not valid: use user:<name>, node:<id> or group:<name> "
            "(names: letters, digits, '.', '_', '-'; users and groups also '@', '+')"
        )
    return subject


def check_tenant(tenant: str) -> str:
    if tenant and not NAME_RE.match(tenant):
        raise UsageError(
            f"tenant {tenant!r} is not valid: use 1-63 letters, digits, '.', '_' or '-'"
        )
    return tenant
