"""Authentication, authorization and audit of every coordinator call (one interceptor).

A coordinator started with certificates (``--tls-dir``) installs :class:`Guard`, a gRPC server
interceptor that wraps every handler:

1. **who**: the bearer token (``authorization: Bearer <jwt>``) when one is sent and JWT is
   configured, else the SPIFFE id of the client certificate the TLS layer verified; neither
   gives ``UNAUTHENTICATED``. Certificates of another CA never get this far (the TLS
   handshake fails), expired ones neither.
2. **may they**: :data:`RULES` maps each method to one permission; the caller's roles
   (:class:`~infermesh.control.policy.Policy`) must hold it, else ``PERMISSION_DENIED``. Some
   methods add an ownership check: a node certificate registers and heartbeats only for its
   own node id, a submitter cancels only its tenant's jobs and submits only for its tenant.
3. **record it**: mutating calls that got past 1 and 2 are appended to the audit log with
   their result. Refused calls write nothing to the store.

Without certificates the coordinator serves plaintext (local development): every caller is
``anonymous`` with every permission and nothing is audited; the guard then only answers
requests whose bytes do not parse with ``INVALID_ARGUMENT`` (gRPC alone says ``UNKNOWN``).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.core.errors import PermissionDenied, Unauthenticated, UsageError
from infermesh.obs.metrics import counter
from infermesh.security.identity import ANONYMOUS, Identity, identity_from_cert, peer_certificate
from infermesh.security.jwt import JwtConfig, JwtVerifier
from infermesh.security.rbac import Permission, Role, permissions_of
from infermesh.security.tls import ServerTls, TlsFiles

if TYPE_CHECKING:
    from infermesh.control.coordinator import Coordinator

logger = logging.getLogger(__name__)

DENIED = counter("infermesh_auth_denied", "Calls refused by authentication or RBAC", ("cell",))
P = Permission


@dataclass(frozen=True)
class Rule:
    """What a method needs: a permission, whether it is audited, what it acts on."""

    permission: Permission
    audit: bool = False
    target: Callable[[Any], str] = field(default=lambda request: "")


def _job_id(r: Any) -> str:
    return str(r.job_id)


_REQUEST_TYPES = {
    m.name: m.input_type.name
    for m in pb.DESCRIPTOR.services_by_name["Coordinator"].methods  # type: ignore[attr-defined]
}

RULES: dict[str, Rule] = {
    "Register": Rule(P.NODE_REPORT, audit=True, target=lambda r: r.spec.node_id),
    "Heartbeat": Rule(P.NODE_REPORT),
    "ListNodes": Rule(P.READ),
    "GetNode": Rule(P.READ, target=lambda r: r.node_id),
    "SetNodeState": Rule(
        P.NODE_ADMIN, audit=True, target=lambda r: f"{r.node_id} {r.action}".strip()
    ),
    "SubmitJob": Rule(P.JOB_SUBMIT, audit=True, target=lambda r: r.spec.name or "job"),
    "ListJobs": Rule(P.READ),
    "GetJob": Rule(P.READ, target=_job_id),
    "CancelJob": Rule(P.JOB_CANCEL_OWN, audit=True, target=_job_id),
    "JobLogs": Rule(P.READ, target=_job_id),
    "ListEvents": Rule(P.READ),
    "Stats": Rule(P.READ),
    "ListEndpoints": Rule(P.READ),
    "RendezvousJoin": Rule(P.RENDEZVOUS, target=lambda r: f"{r.run_id} {r.node_id}"),
    "RendezvousState": Rule(P.READ, target=lambda r: r.run_id),
    "RendezvousClose": Rule(P.RENDEZVOUS, audit=True, target=lambda r: r.run_id),
    "WhoAmI": Rule(P.AUTHENTICATED),
    "Grant": Rule(P.POLICY_WRITE, audit=True, target=lambda r: f"{r.subject} {r.role}"),
    "Revoke": Rule(P.POLICY_WRITE, audit=True, target=lambda r: f"{r.subject} {r.role}"),
    "ListGrants": Rule(P.POLICY_READ),
    "SetQuota": Rule(P.POLICY_WRITE, audit=True, target=lambda r: r.tenant),
    "ListQuotas": Rule(P.POLICY_READ),
    "ListAudit": Rule(P.AUDIT_READ),
}
"""Every method of the Coordinator service; a method missing here is refused."""


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of the current request (what handlers may consult)."""

    identity: Identity
    roles: frozenset[Role]
    permissions: frozenset[Permission]
    tenant: str


INSECURE_CALLER = Caller(ANONYMOUS, frozenset({Role.ADMIN}), frozenset(Permission), "")
CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=INSECURE_CALLER)


@dataclass(frozen=True)
class SecurityConfig:
    """How a coordinator authenticates callers. The default is plaintext on loopback."""

    tls: TlsFiles | None = None
    """CA, certificate and key of the coordinator; turns mTLS (and RBAC, audit) on."""
    insecure: bool = False
    """Serve plaintext on purpose; needed for any address other than loopback."""
    token_port: int | None = None
    """A second TLS port that asks for no client certificate: callers there must send a
    bearer token (people with OIDC tokens and no certificate). ``None``: no such port;
    0 picks a free one. The main port always requires client certificates."""
    jwt: JwtConfig | None = None
    """Accept OIDC bearer tokens as user identities."""
    admins: tuple[str, ...] = ()
    """Subjects that are admins by configuration (bootstrap; not revocable)."""

    @property
    def secure(self) -> bool:
        return self.tls is not None

    def check(self, host: str) -> None:
        """Refuse contradictory settings and plaintext off loopback unless ``insecure``."""
        if self.tls is not None and self.insecure:
            raise UsageError("--insecure conflicts with --tls-dir/--cert; drop one of them")
        if self.tls is None:
            if self.jwt is not None:
                raise UsageError(
                    "JWT bearer tokens need TLS (they must never travel in plaintext): add "
                    "--tls-dir with the coordinator's certificate bundle"
                )
            if self.admins:
                raise UsageError(
                    "--admin needs TLS: without certificates every caller is anonymous; add "
                    "--tls-dir"
                )
            if self.token_port is not None:
                raise UsageError("--token-port needs TLS: add --tls-dir")
            if not self.insecure and not _loopback(host):
                raise UsageError(
                    f"refusing to serve plaintext on {host}: anyone who reaches it could join "
                    "the cell. Give the coordinator certificates (--tls-dir, see `infermesh "
                    "certs`) or pass --insecure to accept that on a trusted network"
                )
        elif self.jwt is None and self.token_port is not None:
            raise UsageError(
                "--token-port needs --jwt-issuer: callers on that port prove who they are "
                "with a bearer token only"
            )

    def describe(self) -> str:
        if self.tls is None:
            return "insecure"
        who = "client certificates required"
        if self.jwt is not None:
            who += ", bearer tokens accepted"
        return f"mTLS, {who}"

    def bind(
        self, server: grpc.aio.Server, host: str, port: int
    ) -> tuple[int, int | None, ServerTls | None]:
        """Add the listening port(s): ``(port, token port or None, server TLS or None)``."""
        if self.tls is None:
            return server.add_insecure_port(f"{host}:{port}"), None, None
        tls = ServerTls(self.tls, require_client_cert=True)
        bound = server.add_secure_port(f"{host}:{port}", tls.credentials())
        token_port = None
        if self.token_port is not None and bound:
            no_cert = ServerTls(self.tls, require_client_cert=False)
            token_port = server.add_secure_port(f"{host}:{self.token_port}", no_cert.credentials())
            if not token_port:
                raise UsageError(f"cannot listen on --token-port {self.token_port}; choose another")
        return bound, token_port, tls


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _code_of(context: Any) -> grpc.StatusCode:
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):
        return grpc.StatusCode.UNKNOWN
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN


def _details_of(context: Any) -> str:
    try:
        details = context.details()
    except (AttributeError, NotImplementedError):
        return ""
    if isinstance(details, bytes):
        return details.decode(errors="replace")
    return str(details or "")


class Malformed:
    """Stands for a request whose bytes did not parse; the handler answers INVALID_ARGUMENT."""

    def __init__(self, message: str, error: Exception) -> None:
        self.text = f"the request is not a valid {message} message ({error})"


def _tolerant(deserializer: Callable[[bytes], Any] | None, message: str) -> Any:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError and friends: the caller's fault, not ours
            return Malformed(message, error)

    return parse


class Guard(grpc.aio.ServerInterceptor):
    """Authenticate, authorize and audit every call of a secure coordinator.

    With ``trust_domain=None`` (a plaintext coordinator) it only turns requests that do not
    parse into ``INVALID_ARGUMENT`` (gRPC itself would answer ``UNKNOWN``); every caller is
    the anonymous admin and nothing is audited.
    """

    def __init__(
        self, coordinator: Coordinator, config: SecurityConfig, trust_domain: str | None
    ) -> None:
        self.c = coordinator
        self.config = config
        self.trust_domain = trust_domain or ""
        self.enforce = trust_domain is not None
        self.verifier = JwtVerifier(config.jwt) if config.jwt is not None else None
        self._denied = DENIED.labels(cell=coordinator.cell)

    # -- who ---------------------------------------------------------------------------------
    async def identify(self, context: Any) -> Identity:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = value if isinstance(value, str) else value.decode(errors="replace")
        if token:
            scheme, _, credential = token.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            if self.verifier is None:
                raise Unauthenticated(
                    "this coordinator accepts no bearer tokens (it runs without --jwt-issuer); "
                    "use a client certificate"
                )
            if self.verifier.config.jwks_url:
                return await asyncio.to_thread(self.verifier.verify, credential.strip())
            return self.verifier.verify(credential.strip())
        pem = peer_certificate(context.auth_context())
        if pem is None:
            raise Unauthenticated(
                "no client certificate and no bearer token; connect with --tls-dir (a bundle "
                "from `infermesh certs issue`) or --token"
            )
        return identity_from_cert(pem, trust_domain=self.trust_domain, cell=self.c.cell)

    def caller(self, identity: Identity) -> Caller:
        roles = frozenset(self.c.policy.roles_of(identity))
        permissions = permissions_of(roles) | {P.AUTHENTICATED}  # every verified caller
        return Caller(identity, roles, permissions, self.c.policy.tenant_of(identity))

    async def _deny(self, context: Any, method: str, who: str, error: Exception) -> None:
        self._denied.inc()
        code = (
            grpc.StatusCode.UNAUTHENTICATED
            if isinstance(error, Unauthenticated)
            else grpc.StatusCode.PERMISSION_DENIED
        )
        logger.warning("denied %s to %s: %s", method, who or context.peer(), error)
        await context.abort(code, str(error))

    async def admit(self, method: str, request: Any, context: Any) -> Caller:
        """Identify and authorize one call (aborts the call when refused or malformed)."""
        if self.enforce:
            caller = await self._authorize(method, request, context)
        else:
            caller = INSECURE_CALLER
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.text)
        return caller

    async def _authorize(self, method: str, request: Any, context: Any) -> Caller:
        who = ""
        try:
            rule = RULES.get(method)
            identity = await self.identify(context)
            who = identity.principal
            caller = self.caller(identity)
            if rule is None:
                raise PermissionDenied(f"method {method} has no access rule; it is refused")
            if rule.permission not in caller.permissions:
                roles = ", ".join(sorted(r.value for r in caller.roles)) or "no role"
                raise PermissionDenied(
                    f"{who} ({roles}) may not call {method}: it needs {rule.permission.value}; "
                    f"an admin can grant a role with `infermesh rbac grant {who} ROLE`"
                )
            if request is not None and not isinstance(request, Malformed):
                self._owns(method, request, caller)
            return caller
        except (Unauthenticated, PermissionDenied) as error:
            await self._deny(context, method, who, error)
            raise  # unreachable: abort raises

    def _owns(self, method: str, request: Any, caller: Caller) -> None:
        """Ownership checks that depend on the request (may rewrite its tenant)."""
        ident = caller.identity
        if method == "Register" and request.spec.node_id != ident.name:
            raise PermissionDenied(
                f"{ident.principal} may only register node {ident.name!r}, not "
                f"{request.spec.node_id!r}: each agent needs its own node certificate"
            )
        if method == "RendezvousJoin" and ident.kind == "node" and request.node_id != ident.name:
            raise PermissionDenied(
                f"{ident.principal} may only join rendezvous as node {ident.name!r}, not "
                f"{request.node_id!r}"
            )
        if method == "SubmitJob":
            spec = request.spec
            if P.JOB_SUBMIT_ANY_TENANT not in caller.permissions:
                if spec.tenant and spec.tenant != caller.tenant:
                    raise PermissionDenied(
                        f"{ident.principal} submits for tenant {caller.tenant!r}, not "
                        f"{spec.tenant!r}; drop the tenant or ask an admin"
                    )
                spec.tenant = caller.tenant
            elif not spec.tenant:
                spec.tenant = caller.tenant
        if method == "CancelJob" and P.JOB_CANCEL_ANY not in caller.permissions:
            job = self.c.jobs.jobs.get(request.job_id)
            if job is not None and job.spec.tenant != caller.tenant:
                raise PermissionDenied(
                    f"job {request.job_id} belongs to tenant {job.spec.tenant or '(none)'!r}; "
                    f"{ident.principal} may cancel only tenant {caller.tenant!r}'s jobs"
                )

    async def record(
        self, method: str, request: Any, caller: Caller, code: grpc.StatusCode, detail: str
    ) -> None:
        rule = RULES.get(method)
        if (
            rule is None
            or not self.enforce
            or not rule.audit
            or (method == "SubmitJob" and request.dry_run)
        ):
            return
        ident = caller.identity
        try:
            target = rule.target(request)
        except AttributeError:
            target = ""
        record = pb.AuditRecord(
            principal=ident.principal,
            method=method,
            target=target,
            result="OK" if code is grpc.StatusCode.OK else code.name,
            detail=detail,
            tenant=caller.tenant,
            source=ident.source,
        )
        try:
            await self.c.audit.append(record)
        except Exception:  # the call's own result matters more than its audit record
            logger.exception("cannot append the audit record of %s by %s", method, ident.principal)

    # -- wrapping ----------------------------------------------------------------------------
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = str(handler_call_details.method).rsplit("/", 1)[-1]  # type: ignore[attr-defined]
        message = _REQUEST_TYPES.get(method, method)
        parse = _tolerant(handler.request_deserializer, message)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._heartbeat(method, handler.stream_stream),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(method, handler.unary_stream),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: Any) -> Any:
            caller = await self.admit(method, request, context)
            token = CALLER.set(caller)
            code, detail = grpc.StatusCode.OK, ""
            try:
                return await behavior(request, context)
            except BaseException:
                code, detail = _code_of(context), _details_of(context)
                raise
            finally:
                CALLER.reset(token)
                await self.record(method, request, caller, code, detail)

        return guarded

    def _unary_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: Any) -> AsyncIterator[Any]:
            caller = await self.admit(method, request, context)
            CALLER.set(caller)
            async for item in behavior(request, context):
                yield item

        return guarded

    def _heartbeat(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            caller = await self.admit(method, None, context)
            CALLER.set(caller)
            node = caller.identity.name

            async def own(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
                async for beat in requests:
                    if not isinstance(beat, Malformed) and beat.node_id != node:
                        await self._deny(
                            context,
                            method,
                            caller.identity.principal,
                            PermissionDenied(
                                f"{caller.identity.principal} may only heartbeat for node "
                                f"{node!r}, not {beat.node_id!r}"
                            ),
                        )
                    yield beat

            # the servicer answers a malformed beat; ownership is checked only when enforced
            async for reply in behavior(own(requests) if self.enforce else requests, context):
                yield reply

        return guarded
