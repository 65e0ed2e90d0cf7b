"""The agent's side of the signal plane: which collectors run and how a batch is sent.

By default an agent runs the host collector and the NVML collector (which reports "no GPU"
once on machines without a driver). ``--fake-gpus N`` swaps NVML for the scripted fake
(tests and demos only; the agent logs that it is fake). Each heartbeat carries one columnar
:class:`~infermesh.client.generated.coordinator_pb2.TelemetryBatch`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.signal.api import Collector, NodeInventory, create_collector, default_collectors
from infermesh.signal.collective import CollectiveCollector, ipc_endpoint
from infermesh.signal.runtime import RUNTIMES

logger = logging.getLogger(__name__)


class Telemetry:
    """A node's collectors: its inventory once, and one batch per heartbeat."""

    def __init__(self, collectors: list[Collector]) -> None:
        self.collectors = collectors

    @classmethod
    def for_node(
        cls,
        fake_gpus: int = 0,
        endpoints: Sequence[pb.ServingEndpoint] = (),
        collective_socket: str | None = None,
        **fake_options: object,
    ) -> Telemetry:
        """Host + NVML (or ``fake_gpus`` scripted GPUs), a /metrics scrape per endpoint, and
        the workers' collective timings on ``collective_socket`` (a Unix socket path)."""
        if fake_gpus > 0:
            logger.warning("reporting %d FAKE GPUs (scripted NVML); not for production", fake_gpus)
            fake = create_collector("fake_nvml", gpus=fake_gpus, **fake_options)
            collectors = [create_collector("host"), fake]
        else:
            collectors = default_collectors()
        for endpoint in endpoints:
            kind = endpoint.kind if endpoint.kind in RUNTIMES else "auto"
            collectors.append(
                create_collector(
                    "runtime",
                    url=f"{endpoint.url}/metrics",
                    kind=kind,
                    model=endpoint.model or None,
                )
            )
        if collective_socket:
            collectors.append(
                create_collector("collective", endpoint=ipc_endpoint(collective_socket))
            )
        return cls(collectors)

    @property
    def collective_endpoint(self) -> str | None:
        """What workers get in ``INFERMESH_SIGNAL_IPC`` (None: no collective collector)."""
        for collector in self.collectors:
            if isinstance(collector, CollectiveCollector):
                return collector.endpoint
        return None

    def inventory(self) -> tuple[list[pb.Gpu], str]:
        gpus: list[pb.Gpu] = []
        reasons: list[str] = []
        for collector in self.collectors:
            inv: NodeInventory = collector.inventory()
            gpus.extend(
                pb.Gpu(index=g.index, uuid=g.uuid, name=g.name, memory_bytes=g.memory_total_bytes)
                for g in inv.gpus
            )
            if inv.no_gpu and inv.source != "host":
                reasons.append(inv.no_gpu)
        return gpus, "" if gpus else ("; ".join(reasons) or "no GPU collector found a GPU")

    def collect(self, now: float) -> pb.TelemetryBatch:
        batch = pb.TelemetryBatch()
        for collector in self.collectors:
            try:
                samples = collector.collect(now)
            except Exception:
                logger.exception("collector %s failed", collector.name)
                continue
            for s in samples:
                batch.name.append(s.name)
                batch.value.append(s.value)
                batch.ts.append(s.ts)
                batch.labels.append(s.labels)
        return batch

    def close(self) -> None:
        for collector in self.collectors:
            collector.close()
