"""Value types of a cell, shared by the coordinator, the agents, the CLI and the planners.

A *node* is one agent: a machine (or, in tests, one of several agents on a machine) that
accepts ``slots`` worker processes. Node lifecycle (:class:`NodeStatus`)::

    ALIVE --(~3 s without heartbeat)--> SUSPECT --(~10 s)--> DEAD
    SUSPECT --(heartbeat)--> ALIVE;  DEAD --(re-register, epoch + 1)--> ALIVE
    ALIVE <--(drain / undrain)--> DRAINING;  any --(quarantine)--> QUARANTINED --(undrain)--> ALIVE

Only ALIVE nodes receive new work. Job lifecycle (:class:`JobStatus`)::

    PENDING -> PLACED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED
    RUNNING -> PLACED (a node was lost: re-planned, restarting)

Placement types: a :class:`PlacementRequest` goes in, a :class:`Placement` (nodes in rank order)
or a :class:`PlacementRefused` error comes out of
:func:`infermesh.train.planning.placement.plan_placement`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from infermesh.core.errors import InferMeshError, UsageError

__all__ = [
    "JobStatus",
    "NodeInfo",
    "NodeStatus",
    "Placement",
    "PlacementRefused",
    "PlacementRequest",
]


class NodeStatus(str, Enum):
    """Where a node stands in the cell (transitions in the module docstring)."""

    ALIVE = "ALIVE"
    SUSPECT = "SUSPECT"
    DEAD = "DEAD"
    DRAINING = "DRAINING"
    QUARANTINED = "QUARANTINED"


class JobStatus(str, Enum):
    """Where a job stands (transitions in the module docstring)."""

    PENDING = "PENDING"
    PLACED = "PLACED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True once the job can never run again."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as the coordinator sees it: identity, capacity, usage and health."""

    node_id: str
    hostname: str
    cell: str = "local"
    rack: str = ""
    """Rack name; nodes with an empty rack count as one unnamed rack."""
    labels: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 0
    cpus: int = 0
    memory_bytes: int = 0
    addresses: tuple[str, ...] = ()
    slots: int = 1
    """Worker processes this node accepts (its GPUs, or configured on CPU nodes)."""
    used_slots: int = 0
    status: NodeStatus = NodeStatus.ALIVE
    status_since: float = 0.0
    """Wall-clock time (seconds since the epoch) of the last status change; 0 if unknown."""
    status_reason: str = ""
    epoch: int = 1

    @property
    def free_slots(self) -> int:
        """Slots not taken by running workers (never negative)."""
        return max(0, self.slots - self.used_slots)


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """What a job asks of the placement planner.

    ``nodes_min``/``nodes_max`` come from ``--nnodes MIN:MAX`` (``auto`` is ``1:<cell size>``);
    every chosen node must have ``nproc_per_node`` free slots. ``constraints`` are label
    equalities (``{"gpu": "h100"}``). ``keep`` lists the nodes already running the job, in their
    current rank order: the planner keeps those that are still healthy so a restart does not
    move ranks needlessly. ``exclude`` names nodes the job must not use.
    """

    job_id: str
    nodes_min: int
    nodes_max: int
    nproc_per_node: int
    cell: str | None = None
    constraints: Mapping[str, str] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        job = f"job {self.job_id!r}"
        if not self.job_id:
            raise UsageError("a placement request needs a job id; got an empty string")
        if self.nodes_min < 1:
            raise UsageError(
                f"{job}: nodes_min is {self.nodes_min}; it must be at least 1 "
                "(--nnodes MIN:MAX with MIN >= 1)"
            )
        if self.nodes_max < self.nodes_min:
            raise UsageError(
                f"{job}: nodes_max {self.nodes_max} is below nodes_min {self.nodes_min}; "
                "pass --nnodes MIN:MAX with MIN <= MAX"
            )
        if self.nproc_per_node < 1:
            raise UsageError(
                f"{job}: nproc_per_node is {self.nproc_per_node}; it must be at least 1 "
                "(--nproc-per-node N)"
            )
        if len(set(self.keep)) != len(self.keep):
            dup = sorted({n for n in self.keep if self.keep.count(n) > 1})
            raise UsageError(f"{job}: keep lists node(s) {', '.join(dup)} more than once")


@dataclass(frozen=True, slots=True)
class Placement:
    """The planner's answer: which nodes run the job, in rank order (node rank = index)."""

    job_id: str
    nodes: tuple[str, ...]
    hosts: int
    """Distinct hostnames among ``nodes``."""
    racks: int
    """Distinct racks among ``nodes`` (the empty rack counts as one)."""
    notes: tuple[str, ...] = ()
    """Why the plan looks the way it does (kept nodes dropped, nodes skipped), for people."""
    nproc_per_node: int = 1

    @property
    def world_size(self) -> int:
        """Worker processes in all: nodes times processes per node."""
        return len(self.nodes) * self.nproc_per_node

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the store and ``--json``)."""
        return {
            "job_id": self.job_id,
            "nodes": list(self.nodes),
            "hosts": self.hosts,
            "racks": self.racks,
            "notes": list(self.notes),
            "nproc_per_node": self.nproc_per_node,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Placement:
        """The inverse of :meth:`to_dict`."""
        return cls(
            job_id=str(data["job_id"]),
            nodes=tuple(str(n) for n in data["nodes"]),
            hosts=int(data["hosts"]),
            racks=int(data["racks"]),
            notes=tuple(str(n) for n in data.get("notes", ())),
            nproc_per_node=int(data.get("nproc_per_node", 1)),
        )


class PlacementRefused(InferMeshError):
    """No placement fits the request now; ``reasons`` says, node by node, what is missing.

    ``str(error)`` is one line: the need, how many nodes match and the first few reasons
    (``job j-3 needs 4 nodes with 8 free slots; 3 match; node-7 quarantined since ...``).
    :func:`~infermesh.train.planning.placement.explain_refusal` lists every reason.
    """

    MAX_REASONS_IN_MESSAGE = 6

    def __init__(
        self,
        job_id: str,
        need: str,
        matching: int,
        reasons: list[str],
        counts: Mapping[str, int] | None = None,
    ) -> None:
        self.job_id = job_id
        self.need = need
        self.matching = matching
        self.reasons = list(reasons)
        self.counts = dict(counts or {})
        shown = self.reasons[: self.MAX_REASONS_IN_MESSAGE]
        parts = [f"job {job_id} needs {need}", f"{matching} match", *shown]
        hidden = len(self.reasons) - len(shown)
        if hidden > 0:
            totals = ", ".join(f"{n} {cause}" for cause, n in self.counts.items())
            parts.append(f"and {hidden} more" + (f" (in all: {totals})" if totals else ""))
        super().__init__("; ".join(parts))
