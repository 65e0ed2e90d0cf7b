"""``infermesh certs``, ``infermesh rbac``, ``infermesh quota``, ``infermesh audit`` and
``infermesh whoami``, and the coordinator's security settings from its flags.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509

from infermesh.cli._cell import with_connection
from infermesh.client.connection import Connection
from infermesh.client.coordinator import pb
from infermesh.control.auth import SecurityConfig
from infermesh.core.errors import InferMeshError, UsageError
from infermesh.security.ca import (
    CA_CERT,
    CERT,
    DEFAULT_LEAF_TTL,
    default_server_names,
    init_ca,
    load_ca,
    parse_ttl,
    write_bundle,
)
from infermesh.security.identity import SpiffeId, spiffe_ids_of
from infermesh.security.jwt import JwtConfig
from infermesh.security.tls import TlsFiles

certs_app = typer.Typer(
    help="Cell certificates: a CA and short-lived node/user certificates.", no_args_is_help=True
)
rbac_app = typer.Typer(help="Role grants: who may do what in the cell.", no_args_is_help=True)
quota_app = typer.Typer(help="Per-tenant job quotas.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log of mutating calls.", no_args_is_help=True)

DEFAULT_CERTS = ".infermesh/certs"


def server_security(
    *,
    tls_dir: str = "",
    ca: str = "",
    cert: str = "",
    key: str = "",
    insecure: bool = False,
    token_port: int = -1,
    admins: list[str] | None = None,
    jwt_issuer: str = "",
    jwt_audience: str = "",
    jwt_jwks_file: str = "",
    jwt_jwks_url: str = "",
) -> SecurityConfig:
    """The coordinator's :class:`SecurityConfig` from its flags (UsageError when they clash)."""
    files = TlsFiles.from_options(tls_dir or None, ca or None, cert or None, key or None)
    jwt = None
    if jwt_issuer or jwt_audience or jwt_jwks_file or jwt_jwks_url:
        jwt = JwtConfig(
            issuer=jwt_issuer,
            audience=jwt_audience,
            jwks_file=jwt_jwks_file,
            jwks_url=jwt_jwks_url,
        )
    return SecurityConfig(
        tls=files,
        insecure=insecure,
        token_port=None if token_port < 0 else token_port,
        jwt=jwt,
        admins=tuple(admins or ()),
    )


def _fail(error: InferMeshError) -> typer.Exit:
    if isinstance(error, UsageError):
        typer.echo(f"infermesh: error: {error}", err=True)
        return typer.Exit(2)
    typer.echo(f"infermesh: {error}", err=True)
    return typer.Exit(1)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


# -- certs -------------------------------------------------------------------------------------
@certs_app.command("init")
def certs_init(
    trust_domain: str = typer.Option(..., help="Trust domain, e.g. example.org."),
    dir: str = typer.Option(DEFAULT_CERTS, "--dir", help="Where the CA is written."),
    ttl: str = typer.Option("365d", help="CA lifetime."),
    force: bool = typer.Option(False, help="Replace an existing CA."),
) -> None:
    """Create the cell CA (ca.pem, ca-key.pem)."""
    try:
        ca = init_ca(dir, trust_domain, ttl=parse_ttl(ttl), force=force)
    except InferMeshError as error:
        raise _fail(error) from None
    end = ca.cert.not_valid_after_utc
    typer.echo(f"CA for spiffe://{ca.trust_domain} in {dir} (valid until {end:%Y-%m-%d})")
    typer.echo(f"keep {Path(dir) / 'ca-key.pem'} secret; hand out {Path(dir) / CA_CERT} only")


@certs_app.command("issue")
def certs_issue(
    node: str = typer.Option("", help="Issue a node certificate for this node id."),
    user: str = typer.Option("", help="Issue a user certificate for this name."),
    coordinator: bool = typer.Option(False, "--coordinator", help="Issue the coordinator's."),
    cell: str = typer.Option("local", help="Cell the identity belongs to."),
    dir: str = typer.Option(DEFAULT_CERTS, "--dir", help="The CA directory."),
    out: str = typer.Option("", help="Bundle directory (default: DIR/<kind>-<name>)."),
    ttl: str = typer.Option("24h", help="Lifetime (s, m, h, d); short-lived, at most 90d."),
    dns: Annotated[list[str] | None, typer.Option(help="Extra DNS name (servers).")] = None,
    ip: Annotated[list[str] | None, typer.Option(help="Extra IP address (servers).")] = None,
) -> None:
    """Issue a certificate bundle (ca.pem, cert.pem, key.pem) for a node, user or coordinator."""
    try:
        if sum(map(bool, (node, user, coordinator))) != 1:
            raise UsageError("give exactly one of --node NAME, --user NAME or --coordinator")
        ca = load_ca(dir)
        life = parse_ttl(ttl) if ttl else DEFAULT_LEAF_TTL
        names, ips = list(dns or []), list(ip or [])
        if coordinator:
            sid = SpiffeId.coordinator(ca.trust_domain, cell)
            base_dns, base_ips = default_server_names()
            names, ips = base_dns + names, base_ips + ips
            default_out = Path(dir) / f"coordinator-{cell}"
        elif node:
            sid = SpiffeId.node(ca.trust_domain, cell, node)
            default_out = Path(dir) / f"node-{node}"
        else:
            sid = SpiffeId.user(ca.trust_domain, cell, user)
            default_out = Path(dir) / f"user-{user}"
        bundle = ca.issue(sid, ttl=life, dns=names, ips=ips)
        where = write_bundle(out or default_out, bundle)
    except InferMeshError as error:
        raise _fail(error) from None
    typer.echo(f"{bundle.spiffe_id}  valid until {bundle.not_after:%Y-%m-%d %H:%M} UTC")
    typer.echo(f"bundle: {where}  (use --tls-dir {where})")


@certs_app.command("show")
def certs_show(path: str = typer.Argument(..., help="A certificate file or a bundle dir.")) -> None:
    """Print a certificate's SPIFFE id, names and validity."""
    file = Path(path) / CERT if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise _fail(UsageError(f"{file}: no such certificate file"))
    cert = x509.load_pem_x509_certificate(file.read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    left = cert.not_valid_after_utc - now
    state = "EXPIRED" if left.total_seconds() < 0 else f"{left.total_seconds() / 3600:.1f} h left"
    typer.echo(f"file      {file}")
    typer.echo(f"spiffe    {', '.join(spiffe_ids_of(cert)) or '-'}")
    typer.echo(f"subject   {cert.subject.rfc4514_string()}")
    typer.echo(f"issuer    {cert.issuer.rfc4514_string()}")
    typer.echo(f"valid     {cert.not_valid_before_utc:%Y-%m-%d %H:%M} .. ")
    typer.echo(f"          {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({state})")


# -- client commands -----------------------------------------------------------------------------
def _client_call(method: str, request: object, conn: Connection) -> Any:
    try:
        with conn.client() as c:
            return c.call(method, request)
    except InferMeshError as error:
        raise _fail(error) from None


@rbac_app.command("grant")
@with_connection
def rbac_grant(
    subject: str = typer.Argument(..., help="user:NAME, node:ID or group:NAME."),
    role: str = typer.Argument(..., help="admin, operator, submitter or viewer."),
    tenant: str = typer.Option("", help="Tenant the subject's jobs belong to."),
    *,
    conn: Connection,
) -> None:
    """Grant a role; it applies to the subject's next call, no restart."""
    request = pb.GrantRequest(subject=subject, role=role, tenant=tenant)
    grant = _client_call("Grant", request, conn)
    extra = f" (tenant {grant.tenant})" if grant.tenant else ""
    typer.echo(f"granted {grant.role} to {grant.subject}{extra}")


@rbac_app.command("revoke")
@with_connection
def rbac_revoke(
    subject: str = typer.Argument(..., help="user:NAME, node:ID or group:NAME."),
    role: str = typer.Argument(..., help="The role to take away."),
    *,
    conn: Connection,
) -> None:
    """Revoke a role; the subject's next call is refused."""
    request = pb.GrantRequest(subject=subject, role=role)
    reply = _client_call("Revoke", request, conn)
    if not reply.removed:
        typer.echo(f"{subject} held no {role} grant; nothing changed")
        raise typer.Exit(1)
    typer.echo(f"revoked {role} from {subject}")


@rbac_app.command("ls")
@with_connection
def rbac_ls(
    subject: str = typer.Option("", help="Only this subject."),
    *,
    conn: Connection,
) -> None:
    """List the grants."""
    reply = _client_call("ListGrants", pb.ListGrantsRequest(subject=subject), conn)
    typer.echo(f"{'SUBJECT':<28} {'ROLE':<10} {'TENANT':<14} {'BY':<20} {'SINCE':<19} SOURCE")
    for g in reply.grants:
        typer.echo(
            f"{g.subject:<28} {g.role:<10} {g.tenant or '-':<14} {g.granted_by or '-':<20} "
            f"{_when(g.granted_at):<19} {g.source}"
        )


@quota_app.command("set")
@with_connection
def quota_set(
    tenant: str = typer.Argument(..., help="The tenant to limit."),
    max_jobs: int = typer.Option(0, help="Unfinished jobs at once (0: no limit)."),
    max_slots: int = typer.Option(0, help="Worker slots / GPUs held at once (0: no limit)."),
    *,
    conn: Connection,
) -> None:
    """Set a tenant's quota (both limits 0 removes it)."""
    request = pb.Quota(tenant=tenant, max_jobs=max_jobs, max_slots=max_slots)
    _client_call("SetQuota", request, conn)
    if not max_jobs and not max_slots:
        typer.echo(f"tenant {tenant}: no quota")
    else:
        typer.echo(
            f"tenant {tenant}: at most {max_jobs or 'any number of'} job(s), "
            f"{max_slots or 'any number of'} slot(s)"
        )


@quota_app.command("ls")
@with_connection
def quota_ls(conn: Connection) -> None:
    """List quotas with what each tenant uses now."""
    reply = _client_call("ListQuotas", pb.ListQuotasRequest(), conn)
    typer.echo(f"{'TENANT':<20} {'JOBS':>11} {'SLOTS':>11}")
    for u in reply.quotas:
        jobs = f"{u.jobs}/{u.quota.max_jobs or '-'}"
        slots = f"{u.slots}/{u.quota.max_slots or '-'}"
        typer.echo(f"{u.quota.tenant:<20} {jobs:>11} {slots:>11}")


@audit_app.callback()
def _audit() -> None:
    """The audit log of mutating calls (a group, so that `audit ls` reads as it will grow)."""


@audit_app.command("ls")
@with_connection
def audit_ls(
    principal: str = typer.Option("", help="Only calls by this principal (user:NAME...)."),
    method: str = typer.Option("", help="Only this method (SubmitJob, Grant...)."),
    limit: int = typer.Option(50, help="Newest N records."),
    *,
    conn: Connection,
) -> None:
    """Show the audit log: who called what, on what, when, with which result."""
    request = pb.ListAuditRequest(principal=principal, method=method, limit=limit)
    reply = _client_call("ListAudit", request, conn)
    typer.echo(f"{'SEQ':>5} {'WHEN':<19} {'WHO':<24} {'METHOD':<16} {'TARGET':<24} RESULT")
    for r in reply.records:
        result = r.result if r.result == "OK" else f"{r.result}: {r.detail}"
        typer.echo(
            f"{r.seq:>5} {_when(r.ts):<19} {r.principal:<24} {r.method:<16} "
            f"{r.target or '-':<24} {result}"
        )


@with_connection
def whoami(conn: Connection) -> None:
    """Show who the coordinator takes you for: principal, roles, tenant."""
    me = _client_call("WhoAmI", pb.WhoAmIRequest(), conn)
    typer.echo(f"principal {me.principal}  ({me.source})")
    if me.spiffe_id:
        typer.echo(f"spiffe    {me.spiffe_id}")
    typer.echo(f"roles     {', '.join(me.roles) or '(none)'}")
    typer.echo(f"tenant    {me.tenant or '-'}")
    if me.groups:
        typer.echo(f"groups    {', '.join(me.groups)}")
    if me.expires_at:
        typer.echo(f"expires   {_when(me.expires_at)}")


__all__ = [
    "audit_app",
    "certs_app",
    "quota_app",
    "rbac_app",
    "server_security",
    "whoami",
]
