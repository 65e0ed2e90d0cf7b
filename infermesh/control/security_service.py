"""The security half of the coordinator API: who am I, grants, quotas, the audit log.

:class:`SecurityRpcs` is mixed into the coordinator's servicer; the :class:`~infermesh.control.
auth.Guard` interceptor has already checked the caller's permission for each of these calls,
and put the caller in :data:`~infermesh.control.auth.CALLER`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.control.auth import CALLER
from infermesh.control.service import rpc

if TYPE_CHECKING:
    from infermesh.control.coordinator import Coordinator


class SecurityRpcs:
    c: Coordinator

    @rpc
    async def WhoAmI(self, request: pb.WhoAmIRequest, context: Any) -> pb.WhoAmIResponse:
        caller = CALLER.get()
        ident = caller.identity
        return pb.WhoAmIResponse(
            principal=ident.principal,
            spiffe_id=ident.spiffe_id,
            source=ident.source,
            roles=sorted(r.value for r in caller.roles),
            tenant=caller.tenant,
            groups=list(ident.groups),
            expires_at=ident.expires_at,
        )

    @rpc
    async def Grant(self, request: pb.GrantRequest, context: Any) -> pb.GrantRecord:
        by = CALLER.get().identity.principal
        return await self.c.policy.grant(request.subject, request.role, request.tenant, by)

    @rpc
    async def Revoke(self, request: pb.GrantRequest, context: Any) -> pb.RevokeResponse:
        removed = await self.c.policy.revoke(request.subject, request.role)
        return pb.RevokeResponse(removed=removed)

    @rpc
    async def ListGrants(
        self, request: pb.ListGrantsRequest, context: Any
    ) -> pb.ListGrantsResponse:
        return pb.ListGrantsResponse(grants=self.c.policy.list_grants(request.subject))

    @rpc
    async def SetQuota(self, request: pb.Quota, context: Any) -> pb.Quota:
        return await self.c.policy.set_quota(request)

    @rpc
    async def ListQuotas(
        self, request: pb.ListQuotasRequest, context: Any
    ) -> pb.ListQuotasResponse:
        return pb.ListQuotasResponse(quotas=self.c.policy.usage(self.c.jobs.active()))

    @rpc
    async def ListAudit(self, request: pb.ListAuditRequest, context: Any) -> pb.ListAuditResponse:
        records = self.c.audit.query(
            principal=request.principal,
            method=request.method,
            since=request.since,
            limit=request.limit or 100,
        )
        return pb.ListAuditResponse(records=records)
