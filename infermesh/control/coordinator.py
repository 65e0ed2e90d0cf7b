"""The cell coordinator: one process per cell, gRPC on port 7600 by default.

It owns the store (SQLite file under ``--state-dir`` by default, etcd or memory by URL), the
node table (:mod:`~infermesh.control.membership`), the job table and rendezvous
(:mod:`~infermesh.control.jobs`), and the fused per-node signals agents stream in. Everything
runs on one asyncio loop; heartbeats are handled in memory and only state changes reach the
store, so a restarted coordinator (even after SIGKILL) finds every node, job and event again
and agents simply reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from infermesh.client.coordinator import CHANNEL_OPTIONS
from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.client.generated import coordinator_pb2_grpc as pb_grpc
from infermesh.control.audit import AuditLog
from infermesh.control.auth import Guard, SecurityConfig
from infermesh.control.collectives import PLAN_INTERVAL_S, CollectivePlanner
from infermesh.control.jobs import JobManager
from infermesh.control.membership import Membership, NodeEntry
from infermesh.control.policy import Policy
from infermesh.control.records import Records
from infermesh.control.security_service import SecurityRpcs
from infermesh.control.service import CoordinatorService
from infermesh.control.store import Store, open_store
from infermesh.core.cell import JobStatus, NodeStatus
from infermesh.core.errors import PortInUse, UsageError
from infermesh.obs.metrics import REGISTRY
from infermesh.security.tls import ServerTls, trust_domain_of
from infermesh.signal.api import parse_labels
from infermesh.signal.collective import FIGURE_SIGNALS
from infermesh.signal.export import SIGNALS
from infermesh.signal.fusion import Health, SignalTable

logger = logging.getLogger(__name__)

STRAGGLER = "train.straggler"
KEEP_REVISIONS = 10_000
PLAN_SIGNAL_AGE_S = 30.0
"""A job is planned from its nodes' signals of the last this many seconds."""
PLAN_BATCH = 20
"""Jobs planned between two hand-backs of the event loop."""
"""Store history kept for watches; older revisions are compacted every minute."""
_QUARANTINE, _QUARANTINED = Health.QUARANTINE.value, NodeStatus.QUARANTINED.value


class _CellCounters(Collector):
    """The coordinators' per-beat counts, kept as plain integers and read at scrape time (a
    Counter.inc per heartbeat costs as much as the rest of the bookkeeping)."""

    def __init__(self) -> None:
        self.cells: dict[int, Coordinator] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        beats = CounterMetricFamily(
            "infermesh_coordinator_heartbeats", "Heartbeats received", labels=("cell",)
        )
        samples = CounterMetricFamily(
            "infermesh_coordinator_samples", "Telemetry samples ingested", labels=("cell",)
        )
        for c in list(self.cells.values()):
            beats.add_metric((c.cell,), c.membership.heartbeats)
            samples.add_metric((c.cell,), c.samples)
        yield beats
        yield samples


CELL_COUNTERS = _CellCounters()
REGISTRY.register(CELL_COUNTERS)


class Servicer(SecurityRpcs, CoordinatorService):
    """The whole Coordinator service: cell calls plus grants, quotas and the audit log."""


def default_store_url(state_dir: str | Path) -> str:
    return f"sqlite:///{Path(state_dir).resolve() / 'coordinator.db'}"


class Coordinator:
    """Construct, :meth:`start` (binds the port), then :meth:`wait` or :meth:`stop`."""

    def __init__(
        self,
        *,
        store_url: str,
        cell: str = "local",
        host: str = "127.0.0.1",
        port: int = 7600,
        suspect_after_s: float = 3.0,
        dead_after_s: float = 10.0,
        heartbeat_interval_s: float = 1.0,
        quarantine_stragglers: bool = False,
        security: SecurityConfig | None = None,
        plan_interval_s: float = PLAN_INTERVAL_S,
    ) -> None:
        self.store_url = store_url
        self.plan_interval_s = plan_interval_s
        self.quarantine_stragglers = quarantine_stragglers
        self.cell = cell
        self.host = host
        self.port = port
        self.timing = (suspect_after_s, dead_after_s, heartbeat_interval_s)
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.server: grpc.aio.Server | None = None
        self.security = security or SecurityConfig()
        self.token_port: int | None = None
        self.server_tls: ServerTls | None = None
        self.security.check(host)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self.store: Store = open_store(self.store_url)
        self.records = Records(self.store, self.cell)
        suspect, dead, interval = self.timing
        self.membership = Membership(
            self.records,
            suspect_after_s=suspect,
            dead_after_s=dead,
            heartbeat_interval_s=interval,
            liveness_leases=self.store_url.startswith("etcd://"),
        )
        self.jobs = JobManager(self.records, self.membership)
        self.signals = SignalTable()
        self.endpoints: dict[str, list[pb.ServingEndpoint]] = {}
        """Model servers per node, as the node's last heartbeat declared them."""
        self.samples = 0  # telemetry samples ingested (infermesh_coordinator_samples_total)
        self._health_seen: dict[str, int] = {}  # node -> NodeState.health_version copied
        CELL_COUNTERS.cells[id(self)] = self
        await self.records.load_events()
        await self.membership.load()
        await self.jobs.load()
        self.policy = Policy(self.records, self.security.admins)
        await self.policy.load()
        self.jobs.quota = self.policy
        self.audit = AuditLog(self.records)
        await self.audit.load()
        trust_domain = None
        if self.security.tls is not None:
            trust_domain = trust_domain_of(self.security.tls.read()[0])
        interceptors = [Guard(self, self.security, trust_domain)]
        self.server = grpc.aio.server(options=CHANNEL_OPTIONS, interceptors=interceptors)
        pb_grpc.add_CoordinatorServicer_to_server(Servicer(self), self.server)
        try:
            bound, self.token_port, self.server_tls = self.security.bind(
                self.server, self.host, self.port
            )
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise PortInUse(self.port, "--port", self.host)
        self.port = bound
        await self.server.start()
        self._tasks.append(asyncio.create_task(self.membership.run_monitor(self._stop)))
        self._tasks.append(asyncio.create_task(self._maintain()))
        self.collectives = CollectivePlanner(self.cell)
        if self.plan_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._plan_collectives()))
        self._tasks.append(asyncio.create_task(self.policy.follow(self._stop)))
        logger.info(
            "coordinator for cell %s listening on %s (%s; store %s)",
            self.cell,
            self.address,
            self.security.describe(),
            self.store_url,
        )

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self, grace_s: float = 1.0) -> None:
        self._stop.set()
        CELL_COUNTERS.cells.pop(id(self), None)
        if self.server is not None:
            await self.server.stop(grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    # -- heartbeat payload -----------------------------------------------------------------
    async def on_heartbeat(self, entry: NodeEntry, beat: pb.AgentHeartbeat) -> None:
        node_id = entry.node_id
        if beat.endpoints or node_id in self.endpoints:
            self.endpoints[node_id] = list(beat.endpoints)
        t = beat.telemetry
        names = list(t.name)  # once: every read of a protobuf string column builds new strs
        if names:
            try:
                accepted = self.signals.ingest(
                    node_id, names, t.value, t.ts, t.labels, received_at=time.time()
                )
            except UsageError as error:
                logger.warning("dropped telemetry from %s: %s", node_id, error)
                accepted = 0
            self.samples += accepted
            await self._apply_health(entry)
            if STRAGGLER in names:
                for name, value, labels in zip(names, t.value, t.labels, strict=True):
                    if name == STRAGGLER:
                        await self._straggler(entry, value, parse_labels(labels))
        for report in beat.jobs:
            await self.jobs.on_report(entry.node_id, report)
        if beat.logs:
            await self.jobs.on_logs(list(beat.logs))

    async def _straggler(self, entry: NodeEntry, ratio: float, labels: dict[str, str]) -> None:
        node_id = await self.jobs.on_straggler(labels.get("job", ""), labels.get("rank", ""), ratio)
        if node_id and self.quarantine_stragglers:
            await self.membership.set_admin(
                node_id, "quarantine", f"straggler: {ratio:.1f}x slower than its job's peers"
            )

    async def _plan_collectives(self) -> None:
        """Every ``plan_interval_s``: re-plan the running jobs' collectives."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.plan_interval_s)
            if self._stop.is_set():
                break
            try:
                await self.plan_collectives()
            except Exception:
                logger.exception("collective planning failed")

    async def plan_collectives(self) -> int:
        """Re-plan every running job's collectives from its nodes' fresh signals; return how
        many plans changed (each is stored, recorded and sent to the job's agents).

        Hands the event loop back every :data:`PLAN_BATCH` jobs: heartbeats are answered
        between batches, not after the whole pass (0.3 s of CPU for 1,250 jobs on 10,000
        nodes, benchmarks/control/README.md)."""
        now = time.time()
        changed = 0
        running = [j for j in self.jobs.active() if j.status == JobStatus.RUNNING.value]
        for i, job in enumerate(running):
            if i and i % PLAN_BATCH == 0:
                await asyncio.sleep(0)
            samples = [
                sample
                for node_id in job.nodes
                for sample in self.signals.fresh(node_id, FIGURE_SIGNALS, PLAN_SIGNAL_AGE_S, now)
            ]
            plan = self.collectives.plan(job, samples)
            if plan is not None:
                await self.jobs.set_plan(job, plan)
                changed += 1
        return changed

    async def _maintain(self) -> None:
        """Every minute: compact the store's history. (Node gauges are read at scrape time.)"""
        SIGNALS.attach(self.signals, max_age_s=30.0)
        try:
            while not self._stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=60.0)
                if self._stop.is_set():
                    break
                try:
                    revision = await self.store.revision()
                    if revision > KEEP_REVISIONS:
                        await self.store.compact(revision - KEEP_REVISIONS)
                except Exception:
                    logger.exception("coordinator maintenance failed")
        finally:
            SIGNALS.detach(self.signals)

    async def _apply_health(self, entry: NodeEntry) -> None:
        """Copy the node's derived health into its record (when it changed); quarantine it
        while its health says so and it is not quarantined (an operator may undrain it)."""
        node_id = entry.node_id
        state = self.signals.nodes.get(node_id)
        if state is None:
            return
        if self._health_seen.get(node_id) != state.health_version:
            self._health_seen[node_id] = state.health_version
            health, reasons = state.health()
            entry.node.health, entry.node.health_reason = health.value, "; ".join(reasons)
        if entry.node.health == _QUARANTINE and entry.node.admin != _QUARANTINED:
            await self.membership.set_admin(node_id, "quarantine", entry.node.health_reason)

    async def set_node_state(self, node_id: str, action: str, reason: str) -> pb.Node:
        if action == "undrain" and node_id in self.signals.nodes:
            cleared = self.signals.clear_events(node_id)  # the operator dealt with them
            if cleared:
                reason = reason or f"undrained; {cleared} GPU event(s) cleared"
        await self.membership.set_admin(node_id, action, reason)
        return self.node_view(node_id)

    # -- views -----------------------------------------------------------------------------
    def nodes(self) -> list[str]:
        return list(self.membership.nodes)

    def node_view(self, node_id: str) -> pb.Node:
        entry = self.membership.get(node_id)
        if entry is None:
            raise KeyError(node_id)
        node = pb.Node()
        node.CopyFrom(entry.node)
        node.used_slots = self.jobs.used_slots(node_id)
        node.jobs.extend(self.jobs.jobs_on(node_id))
        return node

    def node_detail(self, node_id: str, max_age_s: float) -> pb.NodeDetail:
        detail = pb.NodeDetail(node=self.node_view(node_id))
        detail.events.extend(e for e in self.records.events if e.subject == node_id)
        if node_id in self.signals.nodes:
            view = self.signals.view(node_id, max_age_s, time.time())
            for s in sorted(view.series.values(), key=lambda s: (s.name, s.labels)):
                detail.signals.append(
                    pb.Signal(name=s.name, labels=s.labels, value=s.value, age_s=s.age_s)
                )
            detail.stale.extend(f"{s.name}{{{s.labels}}}" for s in view.stale)
        return detail

    def serving_endpoints(self, kind: str = "") -> list[pb.ServingEndpoint]:
        """Model servers on nodes that take work (ALIVE), with their node's status and health."""
        out: list[pb.ServingEndpoint] = []
        for node_id, endpoints in sorted(self.endpoints.items()):
            entry = self.membership.get(node_id)
            if entry is None or entry.shown_status() is not NodeStatus.ALIVE:
                continue
            for endpoint in endpoints:
                if kind and endpoint.kind != kind:
                    continue
                item = pb.ServingEndpoint()
                item.CopyFrom(endpoint)
                item.node_id = node_id
                item.node_status = entry.node.status
                item.health = entry.node.health
                out.append(item)
        return out

    async def events(self, *, subject: str = "", limit: int = 100) -> list[pb.Event]:
        events = list(self.records.events)
        if subject:
            events = [e for e in events if e.subject == subject]
        return events[-limit:] if limit > 0 else events


def check_port(port: int) -> int:
    if not 0 <= port < 65536:
        raise UsageError(f"--port {port} is not a port number (0-65535; 0 picks a free one)")
    return port
