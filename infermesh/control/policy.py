"""Role grants and tenant quotas, kept in the store and followed by a watch.

Keys (values are the API's ``GrantRecord`` and ``Quota`` messages)::

    /infermesh/<cell>/rbac/<subject>/<role>
    /infermesh/<cell>/quotas/<tenant>

:class:`Policy` loads both prefixes at start and then applies every change it sees on a store
watch, so a grant or revoke made by any coordinator replica (or written to etcd by hand)
takes effect without a restart. Changes made through this coordinator are applied at once
as well, so the caller's next request already sees them.

Quotas limit a tenant's unfinished jobs and the worker slots its placed jobs hold; both are
checked when a job is submitted and every time it is placed or grown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.control.records import Records
from infermesh.control.store import CompactedError, WatchEvent
from infermesh.core.cell import JobStatus
from infermesh.core.errors import QuotaExceeded, UsageError
from infermesh.security.identity import Identity
from infermesh.security.rbac import Role, check_role, check_subject, check_tenant

logger = logging.getLogger(__name__)


class Policy:
    """Grants (subject -> roles, tenant) and quotas (tenant -> limits) of one cell."""

    def __init__(self, records: Records, admins: Sequence[str] = ()) -> None:
        self.records = records
        self.admins = tuple(check_subject(s) for s in admins)
        self.grants: dict[tuple[str, str], pb.GrantRecord] = {}
        self.quotas: dict[str, pb.Quota] = {}
        self.revision = 0
        self.changes = 0
        self._rbac = records.key("rbac") + "/"
        self._quota = records.key("quotas") + "/"

    # -- loading and the watch ---------------------------------------------------------------
    async def load(self) -> None:
        _, rev = await self._reload(self._rbac)
        _, rev2 = await self._reload(self._quota)
        self.revision = min(rev, rev2)

    async def follow(self, stop: asyncio.Event) -> None:
        """Apply store changes under the cell's rbac/ and quotas/ keys until ``stop``."""
        await asyncio.gather(self._follow(self._rbac, stop), self._follow(self._quota, stop))

    async def _follow(self, prefix: str, stop: asyncio.Event) -> None:
        seen = self.revision
        while not stop.is_set():
            try:
                async with self.records.store.watch(prefix, start_revision=seen + 1) as batches:
                    async for batch in batches:
                        for event in batch:
                            self._apply(event)
                            seen = max(seen, event.kv.mod_revision)
            except CompactedError:
                _, seen = await self._reload(prefix)
                continue
            if not stop.is_set():  # the store closed under us; try again shortly
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def _reload(self, prefix: str) -> tuple[int, int]:
        items, revision = await self.records.store.range(prefix)
        if prefix == self._rbac:
            self.grants.clear()
        else:
            self.quotas.clear()
        for kv in items:
            self._apply(WatchEvent("put", kv))
        return len(items), revision

    def _apply(self, event: WatchEvent) -> None:
        key = event.kv.key
        if key.startswith(self._rbac):
            subject, _, role = key[len(self._rbac) :].rpartition("/")
            if event.kind == "delete":
                self.grants.pop((subject, role), None)
            else:
                self.grants[(subject, role)] = Records.decode(pb.GrantRecord, key, event.kv.value)
        elif key.startswith(self._quota):
            tenant = key[len(self._quota) :]
            if event.kind == "delete":
                self.quotas.pop(tenant, None)
            else:
                self.quotas[tenant] = Records.decode(pb.Quota, key, event.kv.value)
        else:
            return
        self.changes += 1

    # -- questions ---------------------------------------------------------------------------
    def roles_of(self, identity: Identity) -> set[Role]:
        roles: set[Role] = set()
        if identity.kind == "node":
            roles.add(Role.NODE)
        for subject in identity.principals:
            if subject in self.admins:
                roles.add(Role.ADMIN)
            for (granted, role), _ in self.grants.items():
                if granted == subject:
                    roles.add(Role(role))
        return roles

    def tenant_of(self, identity: Identity) -> str:
        """The token's tenant, else a grant's tenant, else the user's name ('' for nodes)."""
        if identity.tenant:
            return identity.tenant
        tenants = sorted(
            g.tenant
            for (subject, _), g in self.grants.items()
            if g.tenant and subject in identity.principals
        )
        if tenants:
            return tenants[0]
        return identity.name if identity.kind == "user" else ""

    def list_grants(self, subject: str = "") -> list[pb.GrantRecord]:
        out = [
            pb.GrantRecord(subject=s, role=Role.ADMIN.value, source="flag")
            for s in self.admins
            if not subject or s == subject
        ]
        out += [g for (s, _), g in sorted(self.grants.items()) if not subject or s == subject]
        return out

    # -- changes -----------------------------------------------------------------------------
    async def grant(self, subject: str, role: str, tenant: str, by: str) -> pb.GrantRecord:
        check_subject(subject)
        parsed = check_role(role)
        check_tenant(tenant)
        record = pb.GrantRecord(
            subject=subject,
            role=parsed.value,
            tenant=tenant,
            granted_by=by,
            granted_at=time.time(),
            source="store",
        )
        await self.records.put("rbac", f"{subject}/{parsed.value}", record)
        self.grants[(subject, parsed.value)] = record
        return record

    async def revoke(self, subject: str, role: str) -> bool:
        check_subject(subject)
        parsed = check_role(role)
        if subject in self.admins and parsed is Role.ADMIN:
            raise UsageError(
                f"{subject} is an admin by the coordinator's --admin flag, not by a grant; "
                "restart the coordinator without it to take the role away"
            )
        if (subject, parsed.value) not in self.grants:
            return False
        await self.records.delete("rbac", f"{subject}/{parsed.value}")
        self.grants.pop((subject, parsed.value), None)
        return True

    async def set_quota(self, quota: pb.Quota) -> pb.Quota:
        if not quota.tenant:
            raise UsageError("quota: the tenant is empty; name the tenant it limits")
        check_tenant(quota.tenant)
        if quota.max_jobs < 0 or quota.max_slots < 0:
            raise UsageError(
                f"quota for {quota.tenant}: limits must be >= 0 (0 = no limit), got "
                f"max_jobs={quota.max_jobs}, max_slots={quota.max_slots}"
            )
        if not quota.max_jobs and not quota.max_slots:
            if quota.tenant in self.quotas:
                await self.records.delete("quotas", quota.tenant)
                self.quotas.pop(quota.tenant, None)
            return quota
        await self.records.put("quotas", quota.tenant, quota)
        self.quotas[quota.tenant] = quota
        return quota

    # -- quota checks (called by the job manager) ----------------------------------------------
    @staticmethod
    def _held(tenant: str, active: Iterable[pb.Job], besides: str = "") -> tuple[list[str], int]:
        jobs = [j for j in active if j.spec.tenant == tenant and j.job_id != besides]
        return [j.job_id for j in jobs], sum(len(j.nodes) * j.spec.nproc_per_node for j in jobs)

    def usage(self, active: Iterable[pb.Job]) -> list[pb.QuotaUsage]:
        active = list(active)
        out = []
        for tenant, quota in sorted(self.quotas.items()):
            jobs, slots = self._held(tenant, active)
            out.append(pb.QuotaUsage(quota=quota, jobs=len(jobs), slots=slots))
        return out

    def admit(self, job: pb.Job, active: Iterable[pb.Job]) -> None:
        """Raise :class:`QuotaExceeded` when the tenant may not submit ``job`` now."""
        tenant = job.spec.tenant
        quota = self.quotas.get(tenant)
        if quota is None:
            return
        jobs, _ = self._held(tenant, (j for j in active if not JobStatus(j.status).terminal))
        fix = f"ask an admin to raise it (`infermesh quota set {tenant} ...`)"
        if quota.max_jobs and len(jobs) >= quota.max_jobs:
            raise QuotaExceeded(
                f"tenant {tenant} has {len(jobs)} unfinished job(s) ({', '.join(jobs[:5])}) and "
                f"its quota allows {quota.max_jobs}; wait for one to finish, cancel one "
                f"(`infermesh jobs cancel ID`) or {fix}"
            )
        need = job.spec.nodes_min * job.spec.nproc_per_node
        if quota.max_slots and need > quota.max_slots:
            raise QuotaExceeded(
                f"job needs at least {need} slot(s) ({job.spec.nodes_min} node(s) x "
                f"{job.spec.nproc_per_node}) but tenant {tenant}'s quota allows "
                f"{quota.max_slots}; ask for fewer nodes or processes, or {fix}"
            )

    def node_cap(self, job: pb.Job, active: Iterable[pb.Job]) -> tuple[int, str] | None:
        """Most nodes the tenant's slot quota leaves ``job``, with the reason; None: no limit."""
        quota = self.quotas.get(job.spec.tenant)
        if quota is None or not quota.max_slots:
            return None
        _, held = self._held(job.spec.tenant, active, besides=job.job_id)
        free = max(quota.max_slots - held, 0)
        cap = free // max(job.spec.nproc_per_node, 1)
        reason = (
            f"quota: tenant {job.spec.tenant} holds {held} of its {quota.max_slots} slot(s); "
            f"job {job.job_id} needs {job.spec.nodes_min * job.spec.nproc_per_node} and waits "
            "until the tenant's other jobs finish"
        )
        return cap, reason
