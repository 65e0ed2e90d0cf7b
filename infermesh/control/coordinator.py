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
import logging
import time
from pathlib import Path

import grpc

from infermesh.client.coordinator import CHANNEL_OPTIONS
from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.client.generated import coordinator_pb2_grpc as pb_grpc
from infermesh.control.jobs import JobManager
from infermesh.control.membership import Membership, NodeEntry
from infermesh.control.records import Records
from infermesh.control.service import CoordinatorService
from infermesh.control.store import Store, open_store
from infermesh.core.errors import PortInUse, UsageError
from infermesh.obs.metrics import counter

logger = logging.getLogger(__name__)

TELEMETRY = counter("infermesh_coordinator_samples", "Telemetry samples ingested", ["cell"])


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
    ) -> None:
        self.store_url = store_url
        self.cell = cell
        self.host = host
        self.port = port
        self.timing = (suspect_after_s, dead_after_s, heartbeat_interval_s)
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.server: grpc.aio.Server | None = None
        self._samples = TELEMETRY.labels(cell=cell)  # looked up once, not per heartbeat

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
        )
        self.jobs = JobManager(self.records, self.membership)
        await self.records.load_events()
        await self.membership.load()
        await self.jobs.load()
        self.server = grpc.aio.server(options=CHANNEL_OPTIONS)
        pb_grpc.add_CoordinatorServicer_to_server(CoordinatorService(self), self.server)
        try:
            bound = self.server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as error:
            raise PortInUse(
                f"coordinator cannot listen on {self.address} ({error}); choose another --port "
                "or stop the process that holds it"
            ) from None
        if bound == 0:
            raise PortInUse(
                f"coordinator cannot listen on {self.address}; choose another --port or stop "
                "the process that holds it"
            )
        self.port = bound
        await self.server.start()
        self._tasks.append(asyncio.create_task(self.membership.run_monitor(self._stop)))
        logger.info(
            "coordinator for cell %s listening on %s (store %s)",
            self.cell,
            self.address,
            self.store_url,
        )

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self, grace_s: float = 1.0) -> None:
        self._stop.set()
        if self.server is not None:
            await self.server.stop(grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    # -- heartbeat payload -----------------------------------------------------------------
    async def on_heartbeat(self, entry: NodeEntry, beat: pb.AgentHeartbeat) -> None:
        samples = len(beat.telemetry.name)
        if samples:
            self._samples.inc(samples)
        if beat.jobs:
            for report in beat.jobs:
                await self.jobs.on_report(entry.node_id, report)
        if beat.logs:
            await self.jobs.on_logs(list(beat.logs))

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
        return detail

    async def events(self, *, subject: str = "", limit: int = 100) -> list[pb.Event]:
        events = list(self.records.events)
        if subject:
            events = [e for e in events if e.subject == subject]
        return events[-limit:] if limit > 0 else events


def check_port(port: int) -> int:
    if not 0 <= port < 65536:
        raise UsageError(f"--port {port} is not a port number (0-65535; 0 picks a free one)")
    return port
