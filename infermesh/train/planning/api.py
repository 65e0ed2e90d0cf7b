"""Value types of the collective topology planner: what it reads and the plan it returns.

Everything here is plain, frozen and serialisable (``to_dict``), so the coordinator, the
simulator, the command line and the DDP hook share one vocabulary. Names given by users
(algorithms, compressions, link profiles) are parsed with :func:`parse_choice`, which raises a
one-line :class:`~infermesh.core.errors.UsageError` listing the known names.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, TypeVar

from infermesh.core.errors import UsageError

__all__ = [
    "Algorithm",
    "Alternative",
    "Backend",
    "CollectivePlan",
    "Compression",
    "JobShape",
    "Measurement",
    "PlanChoice",
    "format_bytes",
    "parse_bytes",
    "parse_choice",
    "parse_plan_choice",
]


class Algorithm(str, Enum):
    """How one all-reduce moves the bytes.

    ``ring``, ``tree`` (double binary tree) and ``halving_doubling`` (recursive halving then
    doubling) are flat: one collective over every rank. ``hierarchical`` is two-level:
    intra-node reduce-scatter, inter-node all-reduce of each rank's shard, intra-node
    all-gather. ``hierarchical_leader`` reduces to one leader per node, all-reduces among the
    leaders and broadcasts inside each node.
    """

    RING = "ring"
    TREE = "tree"
    HALVING_DOUBLING = "halving_doubling"
    HIERARCHICAL = "hierarchical"
    HIERARCHICAL_LEADER = "hierarchical_leader"

    @property
    def two_level(self) -> bool:
        """True for the algorithms that need intra-node and inter-node subgroups."""
        return self in (Algorithm.HIERARCHICAL, Algorithm.HIERARCHICAL_LEADER)


class Backend(str, Enum):
    """The process-group backend that runs the collectives.

    The cost model prices what the hook actually runs on it: on gloo, with no async
    reduce-scatter, the hierarchical plan's intra-node reduce-scatter is a full intra-node
    all-reduce, and tree and halving-doubling run as gloo's ring (see the hook's
    ``emulation_notes``).
    """

    NCCL = "nccl"
    GLOO = "gloo"

    @property
    def algorithms(self) -> tuple[Algorithm, ...]:
        """The algorithms the hook applies on this backend: what its planner (and ``infermesh
        topo plan``) chooses from unless told otherwise.

        gloo: ring and the two-level ones (its tree and halving-doubling would be its ring
        again). NCCL: ring and tree (on communicators created with ``NCCL_ALGO``) and the
        two-level ones; NCCL has no halving-doubling, the hook would run NCCL's own choice.
        """
        two_level = (Algorithm.HIERARCHICAL, Algorithm.HIERARCHICAL_LEADER)
        if self is Backend.GLOO:
            return (Algorithm.RING, *two_level)
        return (Algorithm.RING, Algorithm.TREE, *two_level)


class Compression(str, Enum):
    """What is sent instead of fp32 gradients: nothing else, fp16, bf16 or PowerSGD factors."""

    NONE = "none"
    FP16 = "fp16"
    BF16 = "bf16"
    POWERSGD = "powersgd"


E = TypeVar("E", bound=Enum)


def parse_choice(kind: type[E], value: str, what: str) -> E:
    """Return the member of ``kind`` named ``value``; else a UsageError naming the known ones."""
    for member in kind:
        if member.value == value:
            return member
    known = ", ".join(str(m.value) for m in kind)
    raise UsageError(f"unknown {what} {value!r}; known: {known}")


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str) -> int:
    """Parse ``4096``, ``100MB``, ``25MiB`` or ``1.5GB`` into a positive number of bytes."""
    match = _BYTES_RE.match(text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(
            f"bad byte size {text!r}; use a number with an optional unit "
            f"(B, KB, MB, GB, KiB, MiB, GiB), e.g. 100MB"
        )
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise UsageError(f"bad byte size {text!r}; it must be at least 1 byte")
    return value


def format_bytes(n: float) -> str:
    """``26214400`` -> ``25.0MiB`` (binary units, one decimal)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}B"


@dataclass(frozen=True)
class JobShape:
    """The part of a training job the collective planner needs.

    Ranks are node-contiguous (ranks ``k*gpus_per_node .. (k+1)*gpus_per_node - 1`` share
    node ``k``), as torchrun and ``infermesh-run`` number them.
    """

    nodes: int
    """Number of nodes (machines) in the job."""

    gpus_per_node: int
    """Ranks per node (all nodes alike)."""

    grad_bytes: int
    """Bytes of gradients all-reduced per step (fp32)."""

    bucket_bytes: int = 25 * 2**20
    """DDP's bucket size (``bucket_cap_mb``); the smallest fusion window."""

    backward_s: float = 0.0
    """Measured backward time per step; collectives overlap it. 0: unknown (no overlap)."""

    layer_width: int = 4096
    """Typical side of a gradient matrix; PowerSGD sends ``2 * rank / layer_width`` of it."""

    backend: Backend = Backend.NCCL
    """Backend that runs the collectives; the model prices what runs on it (see
    :class:`Backend`)."""

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node", "grad_bytes", "bucket_bytes", "layer_width"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.backward_s < 0:
            raise UsageError(f"backward_s must be >= 0, got {self.backward_s}")

    @property
    def world(self) -> int:
        """Total number of ranks."""
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class PlanChoice:
    """What the hook executes: algorithm, compression and fusion window (bytes per call)."""

    algorithm: Algorithm
    compression: Compression
    fusion_bytes: int
    """Buckets are grouped until a group holds at least this many bytes (one collective)."""

    def label(self) -> str:
        """``ring/none/25.0MiB``: short and stable, for logs and tables."""
        return f"{self.algorithm.value}/{self.compression.value}/{format_bytes(self.fusion_bytes)}"


@dataclass(frozen=True)
class Alternative:
    """One plan the planner considered, with its predicted exposed collective time per step."""

    choice: PlanChoice
    predicted_s: float
    measured_factor: float = 1.0
    """Measured / modelled time applied to the prediction (1.0: model only)."""


@dataclass(frozen=True)
class Measurement:
    """Collective time of one step measured under ``choice`` and what the model predicted."""

    choice: PlanChoice
    measured_s: float
    predicted_s: float


@dataclass(frozen=True)
class CollectivePlan:
    """The planner's answer: the choice, the group layout, why, and every alternative."""

    choice: PlanChoice
    nodes: int
    gpus_per_node: int
    predicted_s: float
    version: int = 1
    """Increases by one each time the choice changes; ranks agree on it by broadcast."""
    reason: str = ""
    alternatives: tuple[Alternative, ...] = field(default_factory=tuple)
    powersgd_rank: int = 4

    @property
    def algorithm(self) -> Algorithm:
        return self.choice.algorithm

    @property
    def compression(self) -> Compression:
        return self.choice.compression

    @property
    def fusion_bytes(self) -> int:
        return self.choice.fusion_bytes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as their names)."""
        out = asdict(self)

        def plain(value: Any) -> Any:
            if isinstance(value, Enum):
                return value.value
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return value

        return plain(out)  # type: ignore[no-any-return]


def parse_plan_choice(text: str, default_window: int) -> PlanChoice:
    """Parse ``algorithm/compression[/window]`` (e.g. ``hierarchical/none/4MB``)."""
    parts = text.split("/")
    if len(parts) not in (2, 3):
        raise UsageError(
            f"bad plan {text!r}; write algorithm/compression[/window], e.g. hierarchical/none/4MB"
        )
    window = parse_bytes(parts[2]) if len(parts) == 3 else default_window
    return PlanChoice(
        parse_choice(Algorithm, parts[0], "algorithm"),
        parse_choice(Compression, parts[1], "compression"),
        window,
    )
