"""Fusion: per-node signal state with ages, EWMAs, rates, derived health and link bandwidth.

The coordinator keeps one :class:`SignalTable`; every telemetry batch from an agent goes to
:meth:`SignalTable.ingest` as four columns. Per node (:class:`NodeState`) and per series
(signal name + canonical labels) it keeps:

- the latest value and the time it was **measured** (a measurement stamped later than its
  arrival -- a node clock ahead of ours -- is clamped to the arrival time);
- a short EWMA (time constant ``tau_s``): of the value for gauges, of the per-second rate
  for counters; and, for counters, the rate between the last two measurements;
- XID events (``gpu.xid``), each once, late ones too, kept until
  :meth:`SignalTable.clear_events` (an operator has reset or replaced the GPU).

Samples older than the series' latest are dropped (counted in ``late``).

**Health** (:meth:`NodeState.health`) is derived on request from the latest values:

==============================  ============  ==========================================
condition                       status        why
==============================  ============  ==========================================
XID 48, 79, 95                  quarantine    double-bit ECC, fell off the bus, uncontained
                                              ECC: the GPU needs a reset
``gpu.lost`` = 1                quarantine    NVML cannot reach the GPU
``gpu.remap_failed`` = 1        quarantine    row remapping failed: replace the GPU
XID 94, 74                      degraded      contained ECC error; NVLink error
``gpu.remapped_rows_pending``   degraded      a reset is needed to apply a row remap
``gpu.ecc_uncorrected`` > 0     degraded      uncorrected ECC errors since the driver loaded
``gpu.temp_c`` >= overheat_c    degraded      overheating
``gpu.thermal_throttle`` = 1    degraded      clocks slowed down for temperature
``gpu.nvlink_up`` = 0           degraded      an NVLink lane is down
==============================  ============  ==========================================

**Views** (:meth:`SignalTable.view`) return every series with its age and list the ones
older than the consumer's ``max_age_s``, so a consumer knows what it does not know.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum

from infermesh.core.errors import UsageError
from infermesh.signal.api import SampleBatch, parse_labels
from infermesh.signal.names import COUNTER, EVENT, kind_of

__all__ = [
    "XID_MEANING",
    "Health",
    "LinkMeasure",
    "NodeState",
    "NodeView",
    "SeriesView",
    "SignalTable",
    "UnknownNode",
]

_GAUGE_KIND, _COUNTER_KIND, _EVENT_KIND = 0, 1, 2
_KIND_CODE = {COUNTER: _COUNTER_KIND, EVENT: _EVENT_KIND}

XID_MEANING: dict[int, tuple[str, str]] = {
    48: ("quarantine", "double-bit ECC error"),
    79: ("quarantine", "GPU fell off the bus"),
    95: ("quarantine", "uncontained ECC error"),
    94: ("degraded", "contained ECC error"),
    74: ("degraded", "NVLink error"),
}
"""XID code -> (status, meaning) for the XIDs that change a node's health."""


class Health(str, Enum):
    """Derived node health. ``ok`` -> ``degraded`` (usable, rank it lower) ->
    ``quarantine`` (place nothing here until an operator clears it)."""

    OK = "ok"
    DEGRADED = "degraded"
    QUARANTINE = "quarantine"


class UnknownNode(UsageError):
    """A view or health was asked for a node that never sent telemetry."""

    def __init__(self, node_id: str, known: Sequence[str]) -> None:
        shown = ", ".join(sorted(known)[:10]) or "none yet"
        super().__init__(f"no telemetry from node {node_id!r}; nodes with telemetry: {shown}")


# series whose value feeds NodeState.health(): a change clears the cached verdict
# (temperature only while at or above the overheat limit, where it is part of the reason)
_HEALTH_ANY, _HEALTH_TEMP = 1, 2
_HEALTH_WATCH = {
    "gpu.lost": _HEALTH_ANY,
    "gpu.remap_failed": _HEALTH_ANY,
    "gpu.remapped_rows_pending": _HEALTH_ANY,
    "gpu.ecc_uncorrected": _HEALTH_ANY,
    "gpu.thermal_throttle": _HEALTH_ANY,
    "gpu.nvlink_up": _HEALTH_ANY,
    "gpu.temp_c": _HEALTH_TEMP,
}


class _Series:
    __slots__ = ("ewma", "first_ts", "kind", "labels", "rate", "ts", "value", "watch")

    def __init__(
        self, kind: int, value: float, ts: float, watch: int = 0, labels: str = ""
    ) -> None:
        self.kind = kind
        self.watch = watch
        self.labels = labels
        self.value = value
        self.ts = ts
        self.first_ts = ts
        self.rate: float | None = None
        self.ewma: float | None = value if kind == _GAUGE_KIND else None


@dataclass(frozen=True, slots=True)
class SeriesView:
    name: str
    labels: str
    value: float
    age_s: float
    ewma: float | None
    """EWMA of the value (gauges) or of the rate (counters); None before a counter's 2nd
    measurement."""
    rate: float | None
    """Counters: per-second increase between the last two measurements."""


@dataclass(frozen=True, slots=True)
class LinkMeasure:
    """Effective collective bandwidth of one link class of a node."""

    link: str
    bytes_per_s: float
    """EWMA of the measured bandwidth."""
    last_bytes_per_s: float
    age_s: float


@dataclass(frozen=True)
class NodeView:
    """A node's signals as of ``now``: fresh ones in ``series``, too-old ones in ``stale``."""

    node_id: str
    now: float
    max_age_s: float
    series: dict[tuple[str, str], SeriesView]
    stale: list[SeriesView]
    health: Health
    reasons: list[str]
    last_received: float

    def value(self, name: str, labels: str = "") -> float | None:
        """The fresh value of one series, or None if absent or stale."""
        s = self.series.get((name, labels))
        return s.value if s is not None else None

    def values(self, name: str) -> dict[str, float]:
        """Fresh values of every series named ``name``, by label string."""
        return {k[1]: s.value for k, s in self.series.items() if k[0] == name}


@dataclass
class NodeState:
    """Everything the coordinator knows about one node's signals."""

    node_id: str
    tau_s: float = 10.0
    overheat_c: float = 90.0
    series: dict[tuple[str, str], _Series] = field(default_factory=dict)
    xids: deque[tuple[float, str, int]] = field(default_factory=lambda: deque(maxlen=1000))
    """(measured ts, labels, code) of the XIDs since the last clear (the last 1000), each
    once however often it was sent, late ones included."""
    last_received: float = 0.0
    ingested: int = 0
    late: int = 0
    _health: tuple[Health, list[str]] | None = None
    """health()'s last answer, cleared whenever a series it reads changes."""
    health_version: int = 0
    """Counts those changes: a reader that saw this version has seen the current health."""

    def _health_changed(self) -> None:
        self._health = None
        self.health_version += 1

    _columns: tuple[list[str], list[str]] | None = None
    """(names, labels) of the last batch, and _row its series in column order: an agent sends
    the same columns every time, so the next batch skips the key lookups."""
    _row: list[_Series] = field(default_factory=list)

    def ingest(
        self,
        names: Sequence[str],
        values: Sequence[float],
        ts: Sequence[float],
        labels: Sequence[str],
        received_at: float,
    ) -> int:
        """Fold one batch in; return the number of samples dropped as late."""
        names, labels = list(names), list(labels)
        columns = self._columns
        if columns is not None and names == columns[0] and labels == columns[1]:
            late = self._update(self._row, values, ts, received_at)
        else:
            late = self._update(
                self._resolve(names, values, ts, labels, received_at), values, ts, received_at
            )
        n = len(names)
        self.ingested += n
        self.late += late
        if received_at > self.last_received:
            self.last_received = received_at
        return late

    def _resolve(
        self,
        names: list[str],
        values: Sequence[float],
        ts: Sequence[float],
        labels: list[str],
        received_at: float,
    ) -> list[_Series | None]:
        """The series of each column, creating new ones from their sample (None in the
        returned row: nothing left to update); remembers the row for the next batch."""
        series = self.series
        row: list[_Series | None] = []
        for name, lab, v, t in zip(names, labels, values, ts, strict=True):
            key = (name, lab)
            s = series.get(key)
            if s is None:
                t = min(t, received_at)
                kind = _KIND_CODE.get(kind_of(name), _GAUGE_KIND)
                watch = _HEALTH_WATCH.get(name, 0)
                series[key] = _Series(kind, v, t, watch, lab)
                if kind == _EVENT_KIND:
                    self.xids.append((t, lab, int(v)))
                if watch or kind == _EVENT_KIND:
                    self._health_changed()
            row.append(s)
        self._columns = (names, labels)
        self._row = [series[key] for key in zip(names, labels, strict=True)]
        return row

    def _update(
        self,
        row: Sequence[_Series | None],
        values: Sequence[float],
        ts: Sequence[float],
        received_at: float,
    ) -> int:
        """Fold each sample into its existing series; return how many were late."""
        tau = self.tau_s
        exp = math.exp
        late = 0
        last_dt, a = math.nan, 0.0  # a batch's samples share a time step: one exp() for all
        for s, v, t in zip(row, values, ts, strict=True):
            if s is None:
                continue
            if t > received_at:
                t = received_at
            dt = t - s.ts
            kind = s.kind
            if kind == _EVENT_KIND:
                event = (t, s.labels, int(v))
                if event not in self.xids:  # an agent may re-send; events are rare
                    self.xids.append(event)
                    self._health_changed()
                if dt < 0:
                    continue  # an older event: kept above, the latest value stays
            elif dt < 0:
                late += 1
                continue
            if (
                s.watch
                and v != s.value
                and (s.watch == _HEALTH_ANY or max(v, s.value) >= self.overheat_c)
            ):
                self._health_changed()
            if kind == _GAUGE_KIND:
                if dt != last_dt:
                    last_dt, a = dt, 1.0 - exp(-dt / tau)
                s.ewma += a * (v - s.ewma)  # type: ignore[operator]
            elif kind == _COUNTER_KIND:
                if dt > 0 and v >= s.value:
                    r = (v - s.value) / dt
                    s.rate = r
                    e = s.ewma
                    s.ewma = r if e is None else e + (1.0 - exp(-dt / tau)) * (r - e)
                elif v < s.value:
                    s.rate = None  # counter reset (process restart): no rate this round
            s.value = v
            s.ts = t
        return late

    # -- reading ----------------------------------------------------------------------------

    def view(self, max_age_s: float, now: float) -> NodeView:
        fresh: dict[tuple[str, str], SeriesView] = {}
        stale: list[SeriesView] = []
        for (name, labels), s in self.series.items():
            sv = SeriesView(name, labels, s.value, now - s.ts, s.ewma, s.rate)
            if sv.age_s <= max_age_s:
                fresh[(name, labels)] = sv
            else:
                stale.append(sv)
        health, reasons = self.health()
        return NodeView(
            self.node_id, now, max_age_s, fresh, stale, health, reasons, self.last_received
        )

    def health(self) -> tuple[Health, list[str]]:
        """Derived status and the human reasons, worst first (cached between changes)."""
        if self._health is None:
            self._health = self._derive_health()
        return self._health[0], list(self._health[1])

    def _derive_health(self) -> tuple[Health, list[str]]:
        quarantine: list[str] = []
        degraded: list[str] = []
        for ts, labels, code in self.xids:
            meaning = XID_MEANING.get(code)
            if meaning is None:
                continue
            where = _where(labels)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
            text = f"{where}: XID {code} ({meaning[1]}) at {when} UTC"
            (quarantine if meaning[0] == "quarantine" else degraded).append(text)
        for (name, labels), s in self.series.items():
            v = s.value
            if name == "gpu.lost" and v:
                quarantine.append(f"{_where(labels)}: lost (NVML cannot reach it)")
            elif name == "gpu.remap_failed" and v:
                quarantine.append(f"{_where(labels)}: row remapping failed; replace the GPU")
            elif name == "gpu.remapped_rows_pending" and v:
                degraded.append(f"{_where(labels)}: row remap pending; reset the GPU")
            elif name == "gpu.ecc_uncorrected" and v > 0:
                degraded.append(f"{_where(labels)}: {v:.0f} uncorrected ECC errors")
            elif name == "gpu.temp_c" and v >= self.overheat_c:
                degraded.append(
                    f"{_where(labels)}: overheating at {v:.0f} C (limit {self.overheat_c:.0f} C)"
                )
            elif name == "gpu.thermal_throttle" and v:
                degraded.append(f"{_where(labels)}: clocks thermally throttled")
            elif name == "gpu.nvlink_up" and not v:
                degraded.append(f"{_where(labels)}: NVLink down")
        if quarantine:
            return Health.QUARANTINE, quarantine + degraded
        if degraded:
            return Health.DEGRADED, degraded
        return Health.OK, []

    def links(self, now: float) -> dict[str, LinkMeasure]:
        """Effective bandwidth per link class from the workers' collective timings."""
        out = {}
        for (name, labels), s in self.series.items():
            if name == "comm.link_bandwidth_bytes_per_s":
                link = parse_labels(labels).get("link", "world")
                ewma = s.ewma if s.ewma is not None else s.value
                out[link] = LinkMeasure(link, ewma, s.value, now - s.ts)
        return out


def _where(labels: str) -> str:
    d = parse_labels(labels)
    parts = []
    if "gpu" in d:
        parts.append(f"GPU {d['gpu']}")
    if "nvlink" in d:
        parts.append(f"NVLink {d['nvlink']}")
    if "mig" in d:
        parts.append(f"MIG {d['mig']}")
    return " ".join(parts) or "node"


class SignalTable:
    """The fused signal state of every node of a cell, keyed by node id.

    :param tau_s: EWMA time constant.
    :param overheat_c: GPU temperature from which a node is degraded.
    """

    def __init__(self, *, tau_s: float = 10.0, overheat_c: float = 90.0) -> None:
        if tau_s <= 0:
            raise UsageError(f"tau_s={tau_s} must be > 0 (seconds of the EWMA time constant)")
        self.tau_s = tau_s
        self.overheat_c = overheat_c
        self.nodes: dict[str, NodeState] = {}

    def _node(self, node_id: str) -> NodeState:
        state = self.nodes.get(node_id)
        if state is None:
            state = self.nodes[node_id] = NodeState(node_id, self.tau_s, self.overheat_c)
        return state

    def ingest(
        self,
        node_id: str,
        names: Sequence[str],
        values: Sequence[float],
        ts: Sequence[float],
        labels: Sequence[str],
        received_at: float,
    ) -> int:
        """Fold one agent batch (four parallel columns) into ``node_id``'s state.

        Returns the number of samples accepted. Raises :class:`UsageError` when the columns
        differ in length (nothing is ingested then).
        """
        n = len(names)
        if not (len(values) == len(ts) == len(labels) == n):
            raise UsageError(
                f"telemetry batch from node {node_id!r} has columns of different lengths "
                f"(names={n} values={len(values)} ts={len(ts)} labels={len(labels)}); "
                "send one entry per sample in every column"
            )
        state = self.nodes.get(node_id) or self._node(node_id)
        return n - state.ingest(names, values, ts, labels, received_at)

    def ingest_batch(self, node_id: str, batch: SampleBatch, received_at: float) -> int:
        return self.ingest(node_id, batch.names, batch.values, batch.ts, batch.labels, received_at)

    def _get(self, node_id: str) -> NodeState:
        state = self.nodes.get(node_id)
        if state is None:
            raise UnknownNode(node_id, list(self.nodes))
        return state

    def view(self, node_id: str, max_age_s: float, now: float) -> NodeView:
        """``node_id``'s signals no older than ``max_age_s`` at ``now``, plus the stale ones."""
        if max_age_s < 0:
            raise UsageError(f"max_age_s={max_age_s} must be >= 0 seconds")
        return self._get(node_id).view(max_age_s, now)

    def health(self, node_id: str) -> tuple[Health, list[str]]:
        return self._get(node_id).health()

    def fresh(
        self, node_id: str, names: Collection[str], max_age_s: float, now: float
    ) -> list[tuple[str, str, float]]:
        """``(name, labels, value)`` of ``node_id``'s series named one of ``names`` (a set,
        for speed) that are at most ``max_age_s`` old; empty for an unknown node. Cheaper than
        :meth:`view` (no view objects), for periodic passes over many nodes."""
        state = self.nodes.get(node_id)
        if state is None:
            return []
        oldest = now - max_age_s
        return [
            (name, labels, s.value)
            for (name, labels), s in state.series.items()
            if name in names and s.ts >= oldest
        ]

    def links(self, node_id: str, now: float) -> dict[str, LinkMeasure]:
        return self._get(node_id).links(now)

    def clear_events(self, node_id: str) -> int:
        """Forget ``node_id``'s XID events (after a GPU reset); return how many."""
        state = self._get(node_id)
        n = len(state.xids)
        state.xids.clear()
        state._health_changed()
        return n

    def forget(self, node_id: str) -> None:
        """Drop a node that left the cell."""
        self.nodes.pop(node_id, None)
