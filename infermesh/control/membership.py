"""Cell membership: registration, heartbeats, liveness states and epochs.

Every node has a *liveness* (ALIVE, SUSPECT after ``suspect_after_s`` without a heartbeat or
as soon as its heartbeat stream closes, DEAD after ``dead_after_s``) and an operator *admin*
state (DRAINING, QUARANTINED or none). The status shown to users is DEAD when dead, else the
admin state when set, else the liveness. Every change of the shown status is an event with
a reason, written to the store before anyone is told.

Epochs fence stale agents: an agent that comes back after DEAD, or a new agent process for a
known node id, gets ``epoch + 1``; heartbeats that carry an older epoch are rejected (their
telemetry and reports are dropped) and the agent is told to register again. Heartbeats are
handled in memory; the store is written only on state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.control.records import Records
from infermesh.control.store import LeaseNotFound
from infermesh.core.cell import NodeInfo, NodeStatus
from infermesh.core.errors import UsageError
from infermesh.obs.metrics import counter, gauge

logger = logging.getLogger(__name__)

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

TRANSITIONS = counter(
    "infermesh_node_transitions", "Node status changes by new status", ("cell", "node")
)
_DEAD = NodeStatus.DEAD  # the hot path reads a module global, not the enum class's attribute
NODES = gauge("infermesh_nodes", "Nodes known to the coordinator", ("cell",))


class DuplicateNode(UsageError):
    """A second live agent tried to register under a node id that is in use."""


class StaleEpoch(UsageError):
    """A message carried an epoch older than the node's current one."""


@dataclass
class NodeEntry:
    node: pb.Node
    liveness: NodeStatus = NodeStatus.ALIVE
    last_seen: float = field(default_factory=time.monotonic)
    stream_open: bool = False
    assign: list[pb.Assignment] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    plans: list[pb.CollectivePlan] = field(default_factory=list)
    """Collective plans of jobs on this node, sent with the next heartbeat reply."""
    node_id: str = field(init=False)
    """``node.spec.node_id``, read on every heartbeat: kept as a plain attribute."""

    def __post_init__(self) -> None:
        self.node_id = self.node.spec.node_id

    def shown_status(self) -> NodeStatus:
        if self.liveness is NodeStatus.DEAD:
            return NodeStatus.DEAD
        if self.node.admin:
            return NodeStatus(self.node.admin)
        return self.liveness

    def info(self, used_slots: int) -> NodeInfo:
        spec = self.node.spec
        return NodeInfo(
            node_id=spec.node_id,
            hostname=spec.hostname,
            cell=spec.cell,
            rack=spec.rack,
            labels=dict(spec.labels),
            gpus=len(spec.gpus),
            cpus=spec.cpus,
            memory_bytes=spec.memory_bytes,
            addresses=tuple(spec.addresses),
            slots=spec.slots,
            used_slots=used_slots,
            status=self.shown_status(),
            status_since=self.node.status_since,
            status_reason=self.node.status_reason,
            epoch=self.node.epoch,
        )


Listener = Callable[[str, NodeStatus, NodeStatus, str], Awaitable[None]]


def validate_spec(spec: pb.NodeSpec) -> None:
    """Reject a registration that could not be a real node, naming the field."""
    if not NODE_ID_RE.match(spec.node_id):
        raise UsageError(
            f"node id {spec.node_id!r} is not valid: use 1-63 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit (agent flag --node-id)"
        )
    if not spec.hostname:
        raise UsageError(f"node {spec.node_id}: hostname is empty")
    if spec.slots < 0 or spec.cpus < 0 or spec.memory_bytes < 0:
        raise UsageError(f"node {spec.node_id}: slots, cpus and memory must not be negative")
    if not spec.gpus and not spec.no_gpu_reason:
        raise UsageError(
            f"node {spec.node_id}: reports no GPUs and no reason; an agent without GPUs "
            "must say why (no_gpu_reason)"
        )


class Membership:
    """The node table of one cell."""

    def __init__(
        self,
        records: Records,
        *,
        suspect_after_s: float = 3.0,
        dead_after_s: float = 10.0,
        heartbeat_interval_s: float = 1.0,
        liveness_leases: bool = False,
    ) -> None:
        if not 0 < suspect_after_s < dead_after_s:
            raise UsageError(
                f"suspect_after_s ({suspect_after_s}) must be > 0 and below dead_after_s "
                f"({dead_after_s})"
            )
        self.records = records
        self.cell = records.cell
        self.suspect_after_s = suspect_after_s
        self.dead_after_s = dead_after_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.nodes: dict[str, NodeEntry] = {}
        self._by_seen: OrderedDict[str, NodeEntry] = OrderedDict()
        """The nodes that are not DEAD, least recently heard from first: the monitor only
        looks at the silent head of this order, not at every node."""
        self.listeners: list[Listener] = []
        self.heartbeats = 0
        self.liveness_leases = liveness_leases
        """Mirror liveness as store leases (etcd mode): ``alive/<node>`` exists while the
        node is not DEAD, so anything watching the store sees nodes come and go."""
        self._leases: dict[str, tuple[int, float]] = {}  # node -> (lease id, last keepalive)

    async def load(self) -> None:
        """Read the node table after a (re)start; known nodes get a fresh grace period."""
        for node in await self.records.load("nodes", pb.Node):
            liveness = NodeStatus.DEAD if node.status == NodeStatus.DEAD.value else NodeStatus.ALIVE
            entry = self.nodes[node.spec.node_id] = NodeEntry(node=node, liveness=liveness)
            if liveness is not NodeStatus.DEAD:
                self._touch(entry)
        NODES.labels(cell=self.cell).set(len(self.nodes))
        logger.info("loaded %d node(s) from the store", len(self.nodes))

    def get(self, node_id: str) -> NodeEntry | None:
        return self.nodes.get(node_id)

    def _touch(self, entry: NodeEntry) -> None:
        entry.last_seen = time.monotonic()
        self._by_seen[entry.node_id] = entry
        self._by_seen.move_to_end(entry.node_id)

    async def register(self, spec: pb.NodeSpec, epoch: int) -> pb.Node:
        validate_spec(spec)
        entry = self.nodes.get(spec.node_id)
        now = time.time()
        if entry is None:
            node = pb.Node(spec=spec, epoch=1, status=NodeStatus.ALIVE.value, status_since=now)
            node.status_reason = "registered"
            entry = self.nodes[spec.node_id] = NodeEntry(node=node)
            self._touch(entry)
            NODES.labels(cell=self.cell).set(len(self.nodes))
            await self._persist_event(entry, "", NodeStatus.ALIVE, "registered (epoch 1)")
            await self.records.put("nodes", spec.node_id, entry.node)
            await self._grant_lease(entry)
            await self._notify(spec.node_id, NodeStatus.DEAD, NodeStatus.ALIVE, "registered")
            return entry.node
        fresh = entry.liveness is NodeStatus.DEAD or epoch != entry.node.epoch
        if fresh and entry.stream_open and entry.liveness is NodeStatus.ALIVE:
            age = time.monotonic() - entry.last_seen
            raise DuplicateNode(
                f"node id {spec.node_id!r} is held by a live agent on {entry.node.spec.hostname} "
                f"(last heartbeat {age:.1f} s ago, epoch {entry.node.epoch}); give this agent "
                "another --node-id or stop the other one"
            )
        entry.node.spec.CopyFrom(spec)
        self._touch(entry)
        if fresh:
            entry.node.epoch += 1
            entry.assign.clear()
            entry.stop.clear()
            entry.plans.clear()
        old = entry.shown_status()
        entry.liveness = NodeStatus.ALIVE
        reason = f"registered again (epoch {entry.node.epoch})" if fresh else "reconnected"
        await self._changed(entry, old, reason, force_event=fresh)
        if fresh or entry.node_id not in self._leases:
            await self._grant_lease(entry)
        if fresh:
            await self._notify(spec.node_id, NodeStatus.DEAD, entry.shown_status(), reason)
        return entry.node

    def heartbeat(self, node_id: str, epoch: int) -> NodeEntry:
        """Record a heartbeat; raise :class:`StaleEpoch` for an unknown or fenced agent."""
        entry = self.nodes.get(node_id)
        if entry is None:
            raise StaleEpoch(f"node {node_id!r} is not registered; register first")
        if epoch != entry.node.epoch or entry.liveness is _DEAD:
            raise StaleEpoch(
                f"node {node_id!r}: epoch {epoch} is stale (current {entry.node.epoch}, "
                f"status {entry.shown_status().value}); register again"
            )
        entry.last_seen = time.monotonic()
        self._by_seen.move_to_end(node_id)  # not DEAD (checked above), so it is in the order
        entry.node.last_heartbeat = time.time()
        self.heartbeats += 1  # exported as infermesh_coordinator_heartbeats_total at scrape time
        return entry

    async def revive(self, entry: NodeEntry) -> None:
        if entry.liveness is NodeStatus.SUSPECT:
            old = entry.shown_status()
            entry.liveness = NodeStatus.ALIVE
            await self._changed(entry, old, "heartbeats resumed")

    async def stream_closed(self, node_id: str, epoch: int) -> None:
        entry = self.nodes.get(node_id)
        if entry is None or entry.node.epoch != epoch:
            return
        entry.stream_open = False
        if entry.liveness is NodeStatus.ALIVE:
            old = entry.shown_status()
            entry.liveness = NodeStatus.SUSPECT
            await self._changed(entry, old, "heartbeat stream closed")

    async def set_admin(self, node_id: str, action: str, reason: str) -> pb.Node:
        entry = self.nodes.get(node_id)
        if entry is None:
            raise KeyError(node_id)
        admin = {"drain": "DRAINING", "quarantine": "QUARANTINED", "undrain": ""}.get(action)
        if admin is None:
            raise UsageError(f"unknown node action {action!r}; use drain, undrain or quarantine")
        old = entry.shown_status()
        entry.node.admin = admin
        await self._changed(entry, old, reason or f"{action} requested", force_event=True)
        return entry.node

    async def _grant_lease(self, entry: NodeEntry) -> None:
        if not self.liveness_leases:
            return
        store = self.records.store
        old = self._leases.pop(entry.node_id, None)
        if old is not None:
            with contextlib.suppress(LeaseNotFound):
                await store.revoke_lease(old[0])
        lease = await store.grant_lease(self.dead_after_s)
        await store.put(
            self.records.key("alive", entry.node_id), str(entry.node.epoch).encode(), lease=lease
        )
        self._leases[entry.node_id] = (lease, time.monotonic())

    async def _keep_leases(self, now: float) -> None:
        store = self.records.store
        for node_id, (lease, last) in list(self._leases.items()):
            entry = self.nodes[node_id]
            if entry.liveness is NodeStatus.DEAD:
                del self._leases[node_id]
                with contextlib.suppress(LeaseNotFound):
                    await store.revoke_lease(lease)
            elif now - last > self.dead_after_s / 3 and now - entry.last_seen < self.dead_after_s:
                try:
                    await store.keepalive(lease)
                    self._leases[node_id] = (lease, now)
                except LeaseNotFound:
                    await self._grant_lease(entry)

    async def check(self) -> None:
        """Advance liveness of silent nodes (called a few times per second)."""
        now = time.monotonic()
        if self._leases:
            await self._keep_leases(now)
        silent_ones = []
        for entry in self._by_seen.values():  # least recently heard from first
            if now - entry.last_seen <= self.suspect_after_s:
                break
            silent_ones.append(entry)
        for entry in silent_ones:
            silent = now - entry.last_seen
            if entry.liveness is NodeStatus.ALIVE and silent > self.suspect_after_s:
                old = entry.shown_status()
                entry.liveness = NodeStatus.SUSPECT
                await self._changed(entry, old, f"no heartbeat for {silent:.1f} s")
            elif entry.liveness is NodeStatus.SUSPECT and silent > self.dead_after_s:
                old = entry.shown_status()
                entry.liveness = NodeStatus.DEAD
                self._by_seen.pop(entry.node_id, None)
                await self._changed(entry, old, f"no heartbeat for {silent:.1f} s")

    async def _changed(
        self, entry: NodeEntry, old: NodeStatus, reason: str, *, force_event: bool = False
    ) -> None:
        new = entry.shown_status()
        if new is old and not force_event:
            return
        entry.node.status = new.value
        entry.node.status_since = time.time()
        entry.node.status_reason = reason
        await self._persist_event(entry, old.value, new, reason)
        await self.records.put("nodes", entry.node_id, entry.node)
        if new is not old:
            TRANSITIONS.labels(cell=self.cell, node=entry.node_id).inc()
            await self._notify(entry.node_id, old, new, reason)

    async def _persist_event(
        self, entry: NodeEntry, old: str, new: NodeStatus, reason: str
    ) -> None:
        logger.info("node %s: %s -> %s (%s)", entry.node_id, old or "-", new.value, reason)
        event = pb.Event(kind="node", subject=entry.node_id, from_state=old, to_state=new.value)
        event.reason = reason
        await self.records.append_event(event)

    async def _notify(self, node_id: str, old: NodeStatus, new: NodeStatus, reason: str) -> None:
        for listener in self.listeners:
            try:
                await listener(node_id, old, new, reason)
            except Exception:
                logger.exception("node listener failed for %s", node_id)

    async def run_monitor(self, stop: asyncio.Event, period_s: float = 0.25) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except Exception:
                logger.exception("membership check failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=period_s)
            except asyncio.TimeoutError:
                pass
