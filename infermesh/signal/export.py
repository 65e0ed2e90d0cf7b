"""Prometheus export of fused node state (coordinator and agent ``/metrics``).

:class:`SignalExporter` turns :class:`~infermesh.signal.fusion.NodeView` s into gauges on the
process registry, with the shared labels only (``node``, ``gpu``, ``model``). Series with
sample-only labels are folded: network interfaces are summed per node, NVLink lanes become
a count of lanes down, MIG instances are not exported. A series that went stale is
*removed* from the exposition, so a dashboard shows a gap instead of a frozen value.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client import Gauge

from infermesh.obs import metrics
from infermesh.signal.api import parse_labels
from infermesh.signal.fusion import Health, NodeView, SignalTable

__all__ = ["EXPORTED", "SignalExporter"]

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

_GAUGES: dict[str, Gauge] = {
    signal: metrics.gauge(metric, doc, labels)
    for signal, (metric, doc, labels, _) in EXPORTED.items()
}
_HEALTH = metrics.gauge(
    "infermesh_node_health", "Derived node health: 0 ok, 1 degraded, 2 quarantine.", ("node",)
)
_AGE = metrics.gauge(
    "infermesh_node_signal_age_seconds",
    "Age of the newest signal received from the node.",
    ("node",),
)
_STALE = metrics.gauge(
    "infermesh_node_stale_signals",
    "Series of the node older than the exporter's max age.",
    ("node",),
)
_NVLINK_DOWN = metrics.gauge(
    "infermesh_gpu_nvlink_down", "NVLink lanes of a GPU reported down.", ("node", "gpu")
)
_XIDS = metrics.gauge(
    "infermesh_gpu_xid_events",
    "XID events held for the node since the last clear, by GPU.",
    ("node", "gpu"),
)


class SignalExporter:
    """Keeps the node gauges of one process in step with the views it is given."""

    def __init__(self) -> None:
        self._gauges = _GAUGES
        self.health, self.age, self.stale = _HEALTH, _AGE, _STALE
        self.nvlink_down, self.xids = _NVLINK_DOWN, _XIDS
        self._children: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = defaultdict(set)

    def export(self, view: NodeView, xids: Iterable[tuple[float, str, int]] = ()) -> None:
        """Set ``view``'s gauges; remove the ones of its series that are now missing/stale."""
        node = view.node_id
        now_set: dict[tuple[Gauge, tuple[str, ...]], float] = defaultdict(float)
        for (name, labels), s in view.series.items():
            d = parse_labels(labels) if labels else {}
            if name == "gpu.nvlink_up":
                key = (self.nvlink_down, (node, d.get("gpu", "")))
                now_set[key] += 0.0 if s.value else 1.0
                continue
            spec = EXPORTED.get(name)
            if spec is None or "mig" in d:
                continue
            _, _, label_names, use_rate = spec
            values = tuple(node if k == "node" else d.get(k, "") for k in label_names)
            value = (s.rate or 0.0) if use_rate else s.value
            if math.isfinite(value):
                now_set[(self._gauges[name], values)] += value
        for _, labels, _code in xids:
            gpu = parse_labels(labels).get("gpu", "")
            now_set[(self.xids, (node, gpu))] += 1.0
        for (gauge, values), value in now_set.items():
            gauge.labels(*values).set(value)
        for gauge, values in self._children[node] - now_set.keys():
            try:
                gauge.remove(*values)
            except KeyError:
                pass
        self._children[node] = set(now_set)
        self.health.labels(node).set(_HEALTH_CODE[view.health])
        newest = min((s.age_s for s in view.series.values()), default=None)
        if newest is None:
            newest = min((s.age_s for s in view.stale), default=math.inf)
        self.age.labels(node).set(newest)
        self.stale.labels(node).set(len(view.stale))

    def export_table(self, table: SignalTable, now: float, max_age_s: float) -> None:
        """Export every node of ``table`` as of ``now``."""
        for state in table.nodes.values():
            self.export(state.view(max_age_s, now), state.xids)

    def forget(self, node: str) -> None:
        """Remove every gauge of ``node`` (it left the cell)."""
        for gauge, values in self._children.pop(node, set()):
            try:
                gauge.remove(*values)
            except KeyError:
                pass
        for g in (self.health, self.age, self.stale):
            try:
                g.remove(node)
            except KeyError:
                pass
