"""The signal plane's value types, the collector interface and its registry.

A **sample** is one measurement: a name from our vocabulary (:mod:`.names`), a value, the
unix time it was *measured* (not sent, not received) and a canonical label string
(``"gpu=0,node=a"``: ``key=value`` pairs sorted by key, keys from :data:`SAMPLE_LABEL_KEYS`).
A **batch** holds samples as four parallel columns -- the shape of the agent's telemetry
message -- so the coordinator ingests it without one Python object per sample.

A **collector** reads one source (NVML, dcgm-exporter, a model server's ``/metrics``, the
host, the workers' collective timings) when asked (:meth:`Collector.collect`) and describes
the node's GPUs once (:meth:`Collector.inventory`). Collectors are created by name from a
registry (:func:`create_collector`); third parties add theirs through the
``infermesh.collectors`` entry point group. Fakes are registered too, but
:func:`default_collectors` never picks them.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from infermesh.core.errors import InferMeshError, UsageError
from infermesh.obs.labels import LABELS

logger = logging.getLogger(__name__)

__all__ = [
    "SAMPLE_LABEL_KEYS",
    "Collector",
    "CollectorError",
    "GpuInfo",
    "NodeInventory",
    "Sample",
    "SampleBatch",
    "UnknownCollector",
    "create_collector",
    "default_collectors",
    "format_labels",
    "known_collectors",
    "parse_labels",
    "register_collector",
]

SAMPLE_LABEL_KEYS: tuple[str, ...] = (*LABELS, "link", "iface", "nvlink", "mig", "backend")
"""Label keys a sample may carry: the shared vocabulary plus five that only samples need --
``link`` (collective link class: ``intra``, ``inter``, ``world``), ``iface`` (network
interface), ``nvlink`` (NVLink lane index), ``mig`` (MIG instance index) and ``backend`` (a
training job's process-group backend). They never become Prometheus labels (see
:mod:`.export`)."""

_KEYS = frozenset(SAMPLE_LABEL_KEYS)


class CollectorError(InferMeshError):
    """A collector could not be created or read (bad options, unreachable endpoint)."""


class UnknownCollector(CollectorError, UsageError):
    """No collector is registered under the requested name."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.known = sorted(known)
        super().__init__(f"unknown collector {name!r}; known: {', '.join(self.known)}")
        self.name = name


def format_labels(**labels: object) -> str:
    """The canonical label string of ``labels``: ``k=v`` pairs sorted by key, comma-joined.

    Keys must be in :data:`SAMPLE_LABEL_KEYS`; values must not contain ``,`` or ``=``.
    Empty values are dropped.
    """
    parts = []
    for key in sorted(labels):
        value = labels[key]
        if value is None or value == "":
            continue
        if key not in _KEYS:
            raise UsageError(
                f"sample label {key!r} is not allowed; use one of {', '.join(SAMPLE_LABEL_KEYS)}"
            )
        text = str(value)
        if "," in text or "=" in text:
            raise UsageError(f"sample label value {text!r} ({key}) must not contain ',' or '='")
        parts.append(f"{key}={text}")
    return ",".join(parts)


def parse_labels(text: str) -> dict[str, str]:
    """The dict of a canonical label string (inverse of :func:`format_labels`)."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"bad sample labels {text!r}: expected 'key=value,key=value'")
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement. ``ts`` is the unix time it was measured; ``labels`` is canonical."""

    name: str
    value: float
    ts: float
    labels: str = ""


@dataclass(slots=True)
class SampleBatch:
    """Samples as four parallel columns (the telemetry message carries exactly these)."""

    names: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    @classmethod
    def from_samples(cls, samples: Iterable[Sample]) -> SampleBatch:
        batch = cls()
        batch.extend(samples)
        return batch

    def append(self, sample: Sample) -> None:
        self.names.append(sample.name)
        self.values.append(sample.value)
        self.ts.append(sample.ts)
        self.labels.append(sample.labels)

    def extend(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            self.append(s)

    def check(self) -> None:
        """Raise :class:`UsageError` if the columns have different lengths."""
        n = len(self.names)
        if not (len(self.values) == len(self.ts) == len(self.labels) == n):
            raise UsageError(
                "sample batch columns differ in length: "
                f"names={n} values={len(self.values)} ts={len(self.ts)} "
                f"labels={len(self.labels)}; every column needs one entry per sample"
            )

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Sample]:
        for name, value, ts, labels in zip(
            self.names, self.values, self.ts, self.labels, strict=True
        ):
            yield Sample(name, value, ts, labels)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU (or MIG instance, ``mig`` set) as NVML describes it."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    mig_enabled: bool = False
    mig_instances: tuple[str, ...] = ()
    """UUIDs of the MIG devices on this GPU (empty without MIG)."""
    pci_bus_id: str = ""
    nvlinks: int = 0
    """NVLink lanes found active at start."""


@dataclass(frozen=True, slots=True)
class NodeInventory:
    """What a collector found on this node. ``no_gpu`` says why there are no GPUs."""

    source: str
    gpus: tuple[GpuInfo, ...] = ()
    no_gpu: str | None = None
    driver_version: str = ""
    cuda_version: str = ""
    topology: tuple[tuple[str, ...], ...] = ()
    """GPU-to-GPU matrix in ``nvidia-smi topo -m`` words: ``X`` (self), ``NV<n>``
    (n NVLink lanes), ``PIX``, ``PXB``, ``PHB``, ``NODE``, ``SYS``."""
    details: Mapping[str, str] = field(default_factory=dict)
    """Source-specific facts (CPU count, memory, interface names, endpoint URL)."""

    @property
    def has_gpus(self) -> bool:
        return bool(self.gpus)


class Collector(ABC):
    """Reads one signal source.

    Lifecycle: created (cheap, may fail with :class:`CollectorError` for bad options) ->
    :meth:`collect` called periodically by the agent (never raises for a source that went
    away: it logs once and returns what it has) -> :meth:`close` (idempotent).
    """

    name: str = ""

    @abstractmethod
    def collect(self, now: float) -> list[Sample]:
        """Read the source; ``now`` is the agent's clock, used where the source has none."""

    def inventory(self) -> NodeInventory:
        """What this source knows of the node's hardware (no GPUs by default)."""
        return NodeInventory(source=self.name, no_gpu=f"{self.name} does not report GPUs")

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release threads, sockets and libraries."""

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


CollectorFactory = Callable[..., Collector]
_BUILTIN: dict[str, str] = {
    "nvml": "infermesh.signal.nvml:NvmlCollector",
    "dcgm": "infermesh.signal.dcgm:DcgmCollector",
    "host": "infermesh.signal.host:HostCollector",
    "runtime": "infermesh.signal.runtime:RuntimeCollector",
    "collective": "infermesh.signal.collective:CollectiveCollector",
    "fake_nvml": "infermesh.signal.fakes:fake_nvml_collector",
    "fake_dcgm": "infermesh.signal.fakes:fake_dcgm_collector",
}
_registered: dict[str, CollectorFactory] = {}
ENTRY_POINT_GROUP = "infermesh.collectors"


def register_collector(name: str, factory: CollectorFactory) -> None:
    """Make ``create_collector(name, ...)`` call ``factory(**options)``."""
    _registered[name] = factory


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_collectors() -> list[str]:
    """Every name :func:`create_collector` accepts."""
    return sorted({*_BUILTIN, *_registered, *_entry_points()})


def _resolve(name: str) -> CollectorFactory:
    if name in _registered:
        return _registered[name]
    if name in _BUILTIN:
        module, _, attr = _BUILTIN[name].partition(":")
        factory: CollectorFactory = getattr(importlib.import_module(module), attr)
        return factory
    eps = _entry_points()
    if name in eps:
        loaded: CollectorFactory = eps[name].load()
        return loaded
    raise UnknownCollector(name, known_collectors())


def create_collector(name: str, **options: Any) -> Collector:
    """Create the collector registered as ``name`` with ``options`` (its keyword arguments).

    Raises :class:`UnknownCollector` listing the known names, or :class:`CollectorError`
    naming an option the collector does not take.
    """
    factory = _resolve(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise CollectorError(
            f"collector {name!r} does not accept options {sorted(options)}: {exc}; "
            "see docs/SIGNALS.md for each collector's options"
        ) from exc


def default_collectors() -> list[Collector]:
    """The collectors an agent runs on this machine: the host and NVML.

    On a machine without an NVIDIA driver the NVML collector reports "no GPU" in its
    inventory (once, in the log) and collects nothing; it is still returned so the
    agent can report why. Fakes are never chosen here: name them explicitly.
    """
    return [create_collector("host"), create_collector("nvml")]
