"""Prometheus export of fused node state (the coordinator's ``/metrics``).

:data:`SIGNALS` is a collector on the process registry that reads the attached
:class:`~infermesh.signal.fusion.SignalTable` s when ``/metrics`` is scraped, not before:
a cell of 10,000 nodes pays for its node gauges once per scrape instead of on a timer.
Labels are the shared ones only (``node``, ``gpu``, ``model``). Series with sample-only
labels are folded: network interfaces are summed per node, NVLink lanes become a count of
lanes down, MIG instances are not exported. A series older than the collector's max age is
left out, so a dashboard shows a gap instead of a frozen value.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from infermesh.obs.labels import check_labels
from infermesh.obs.metrics import REGISTRY
from infermesh.signal.api import parse_labels
from infermesh.signal.fusion import Health, NodeState, NodeView, SignalTable

__all__ = ["EXPORTED", "SIGNALS", "SignalCollector"]

logger = logging.getLogger(__name__)

# signal name -> (metric name, help, label names, use the rate instead of the value)
EXPORTED: dict[str, tuple[str, str, tuple[str, ...], bool]] = {
    "gpu.util": ("infermesh_gpu_utilization_ratio", "GPU busy fraction.", ("node", "gpu"), False),
    "gpu.mem_used_bytes": (
        "infermesh_gpu_memory_used_bytes",
        "GPU memory in use.",
        ("node", "gpu"),
        False,
    ),
    "gpu.mem_total_bytes": (
        "infermesh_gpu_memory_total_bytes",
        "GPU memory size.",
        ("node", "gpu"),
        False,
    ),
    "gpu.temp_c": (
        "infermesh_gpu_temperature_celsius",
        "GPU temperature.",
        ("node", "gpu"),
        False,
    ),
    "gpu.power_w": ("infermesh_gpu_power_watts", "GPU power draw.", ("node", "gpu"), False),
    "gpu.sm_active": (
        "infermesh_gpu_sm_active_ratio",
        "DCGM SM activity.",
        ("node", "gpu"),
        False,
    ),
    "gpu.tensor_active": (
        "infermesh_gpu_tensor_active_ratio",
        "DCGM tensor pipe activity.",
        ("node", "gpu"),
        False,
    ),
    "gpu.ecc_uncorrected": (
        "infermesh_gpu_ecc_uncorrected_errors",
        "Volatile uncorrected ECC errors.",
        ("node", "gpu"),
        False,
    ),
    "host.cpu_percent": ("infermesh_host_cpu_percent", "Host CPU busy.", ("node",), False),
    "host.mem_used_bytes": (
        "infermesh_host_memory_used_bytes",
        "Host memory in use.",
        ("node",),
        False,
    ),
    "net.rx_bytes": (
        "infermesh_host_network_receive_bytes_per_second",
        "Bytes per second received over all reported interfaces.",
        ("node",),
        True,
    ),
    "net.tx_bytes": (
        "infermesh_host_network_transmit_bytes_per_second",
        "Bytes per second sent over all reported interfaces.",
        ("node",),
        True,
    ),
    "runtime.requests_running": (
        "infermesh_runtime_requests_running",
        "Requests a model server is decoding.",
        ("node", "model"),
        False,
    ),
    "runtime.requests_waiting": (
        "infermesh_runtime_requests_waiting",
        "Requests queued in a model server.",
        ("node", "model"),
        False,
    ),
    "runtime.kv_cache_usage": (
        "infermesh_runtime_kv_cache_usage_ratio",
        "KV-cache fraction in use.",
        ("node", "model"),
        False,
    ),
    "runtime.ttft_p95_s": (
        "infermesh_runtime_ttft_p95_seconds",
        "95th-percentile time to first token over the model server's last scrape interval.",
        ("node", "model"),
        False,
    ),
}

_HEALTH_CODE = {Health.OK: 0.0, Health.DEGRADED: 1.0, Health.QUARANTINE: 2.0}

# (metric name, help, label names) of the per-node families that are not in EXPORTED
_HEALTH = ("infermesh_node_health", "Derived node health: 0 ok, 1 degraded, 2 quarantine.")
_AGE = ("infermesh_node_signal_age_seconds", "Age of the newest signal received from the node.")
_STALE = ("infermesh_node_stale_signals", "Series of the node older than the exporter's max age.")
_NVLINK_DOWN = ("infermesh_gpu_nvlink_down", "NVLink lanes of a GPU reported down.")
_XIDS = ("infermesh_gpu_xid_events", "XID events held for the node since the last clear, by GPU.")

Key = tuple[str, tuple[str, ...]]  # (metric name, label values)


def node_samples(view: NodeView, xids: list[tuple[float, str, int]]) -> dict[Key, float]:
    """The exported samples of one node's view: metric name and label values -> value."""
    node = view.node_id
    out: dict[Key, float] = defaultdict(float)
    for (name, labels), s in view.series.items():
        d = parse_labels(labels) if labels else {}
        if name == "gpu.nvlink_up":
            out[(_NVLINK_DOWN[0], (node, d.get("gpu", "")))] += 0.0 if s.value else 1.0
            continue
        spec = EXPORTED.get(name)
        if spec is None or "mig" in d:
            continue
        metric, _, label_names, use_rate = spec
        values = tuple(node if k == "node" else d.get(k, "") for k in label_names)
        value = (s.rate or 0.0) if use_rate else s.value
        if math.isfinite(value):
            out[(metric, values)] += value
    for _, labels, _code in xids:
        out[(_XIDS[0], (node, parse_labels(labels).get("gpu", "")))] += 1.0
    out[(_HEALTH[0], (node,))] = _HEALTH_CODE[view.health]
    newest = min((s.age_s for s in view.series.values()), default=None)
    if newest is None:
        newest = min((s.age_s for s in view.stale), default=math.inf)
    out[(_AGE[0], (node,))] = newest
    out[(_STALE[0], (node,))] = float(len(view.stale))
    return out


class SignalCollector(Collector):
    """Node gauges read from the attached signal tables at scrape time.

    :param clock: the time a scrape's ages are measured at (``time.time``; tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._tables: list[tuple[SignalTable, float]] = []
        self._lock = threading.Lock()
        self._families: dict[str, tuple[str, tuple[str, ...]]] = {
            metric: (doc, labels) for metric, doc, labels, _ in EXPORTED.values()
        }
        for metric, doc in (_HEALTH, _AGE, _STALE):
            self._families[metric] = (doc, ("node",))
        for metric, doc in (_NVLINK_DOWN, _XIDS):
            self._families[metric] = (doc, ("node", "gpu"))
        for _, labels in self._families.values():
            check_labels(labels)

    def attach(self, table: SignalTable, max_age_s: float = 30.0) -> None:
        """Export ``table``'s nodes, leaving out series older than ``max_age_s``."""
        with self._lock:
            self._tables = [t for t in self._tables if t[0] is not table] + [(table, max_age_s)]

    def detach(self, table: SignalTable) -> None:
        with self._lock:
            self._tables = [t for t in self._tables if t[0] is not table]

    def _nodes(self) -> Iterator[tuple[NodeState, float]]:
        """Each node of the attached tables with its table's max age (the first table wins a
        node id that is in two)."""
        with self._lock:
            tables = list(self._tables)
        seen: set[str] = set()
        for table, max_age_s in tables:
            for node_id, state in list(table.nodes.items()):
                if node_id not in seen:
                    seen.add(node_id)
                    yield state, max_age_s

    def samples(self) -> dict[Key, float]:
        """Every gauge sample a scrape would show now."""
        now = self.clock()
        out: dict[Key, float] = {}
        for state, max_age_s in self._nodes():
            out.update(node_samples(state.view(max_age_s, now), list(state.xids)))
        return out

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        families = {
            metric: GaugeMetricFamily(metric, doc, labels=labels)
            for metric, (doc, labels) in self._families.items()
        }
        t0 = time.perf_counter()
        samples = self.samples()
        for (metric, values), value in sorted(samples.items()):
            families[metric].add_metric(values, value)
        yield from self._counters()
        elapsed = time.perf_counter() - t0
        if elapsed > 0.5:
            logger.info("exporting %d node samples took %.2f s", len(samples), elapsed)
        yield from families.values()

    def _counters(self) -> Iterator[CounterMetricFamily]:
        """Samples ingested and dropped as late, by node (the tables count them)."""
        accepted = CounterMetricFamily(
            "infermesh_signal_samples",
            "Telemetry samples ingested into the node state table, by node.",
            labels=("node",),
        )
        late = CounterMetricFamily(
            "infermesh_signal_late_samples",
            "Samples dropped because a newer measurement of the same series was already held.",
            labels=("node",),
        )
        for state, _ in self._nodes():
            accepted.add_metric((state.node_id,), state.ingested - state.late)
            late.add_metric((state.node_id,), state.late)
        yield accepted
        yield late

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for metric, (doc, labels) in self._families.items():
            yield GaugeMetricFamily(metric, doc, labels=labels)
        yield from self._counters()


SIGNALS = SignalCollector()
"""The process's node-signal collector, registered on :data:`~infermesh.obs.metrics.REGISTRY`."""
REGISTRY.register(SIGNALS)
