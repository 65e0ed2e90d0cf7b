"""The routing-strategy interface shared by the router, the planner and the simulator.

A strategy sees one request (:class:`RequestView`) and a columnar view of the fleet
(:class:`FleetView`: one row per target node, nodes grouped by cell, each signal with its
age) and returns a :class:`Decision`: ranked targets, an optional hedge and an admission
verdict. Strategies are pure: no I/O, no wall clock (the host passes ``now``), no imports
from the router or the simulator. They may keep private state (a round-robin cursor, an
online model) and may learn from :meth:`Strategy.observe`.

Row-per-node arrays (instead of one object per candidate) keep a decision over 1,024 nodes
to a few numpy calls; the router builds the same view from its NodeState table.

The small value types (:class:`RequestView`, :class:`Decision`, :class:`Hedge`,
:class:`Outcome`) are plain slotted dataclasses, not frozen ones: one of each is built per
request, and a frozen dataclass costs several times more to construct. Treat them as
read-only all the same.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from infermesh.core.errors import UsageError

__all__ = [
    "CellSummary",
    "Decision",
    "FleetView",
    "Hedge",
    "Outcome",
    "RequestView",
    "Strategy",
    "StrategyError",
    "UnknownStrategy",
]

FloatArray = np.ndarray
IntArray = np.ndarray


class StrategyError(UsageError):
    """A strategy was given options it does not understand or cannot use."""


class UnknownStrategy(StrategyError):
    """No strategy is registered under the requested name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown strategy {name!r}; known: {', '.join(sorted(known))}")
        self.name = name
        self.known = sorted(known)


@dataclass(slots=True)
class RequestView:
    """What a router knows about one request when it routes it.

    ``output_tokens`` is the router's estimate (``max_tokens`` or a per-type mean), not the
    true length. ``excluded`` lists targets that already refused this request (retries).
    """

    request_id: int
    kind: str
    tenant: int
    prompt_tokens: int
    output_tokens: int
    prefix_group: int
    origin_cell: int
    slo_s: float
    attempt: int = 0
    excluded: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CellSummary:
    """Per-cell aggregates of the published node signals (one entry per cell).

    ``load`` is published (queued + running) / capacity over available nodes; ``free_slots``
    is available capacity minus published load; ``speed`` is the capacity-weighted mean
    compute scale; ``price_per_hour`` the mean node price; ``sent`` the router-local count
    of requests sent to the cell since the last queue update.
    """

    available: IntArray
    capacity: FloatArray
    load: FloatArray
    free_slots: FloatArray
    speed: FloatArray
    price_per_hour: FloatArray
    sent: FloatArray

    def load_now(self) -> FloatArray:
        """Published load plus router-local sends, per unit of available capacity."""
        return self.load + self.sent / np.maximum(self.capacity, 1.0)


@dataclass(slots=True)
class FleetView:
    """Columnar view of candidate targets as the signal plane publishes them.

    Nodes of cell ``c`` occupy rows ``cell_start[c]:cell_start[c + 1]``. Dynamic columns
    (``queue_depth``, ``running``, ``vram_free_frac``, ``utilization``) are as last published
    and carry their age in seconds (``*_age_s``: a scalar when all nodes published together,
    else one age per row). ``sent_since_update`` is router-local knowledge: requests this
    router sent to each node since its queue signal was last published. The host owns the
    view: it refreshes columns when signals arrive (and then increments ``epoch``, so a
    strategy may cache what it derives from published columns until the epoch changes)
    and sets the ages before each call; strategies must not modify it.
    """

    cell_of: IntArray
    cell_start: IntArray
    available: np.ndarray
    capacity: FloatArray
    speed: FloatArray
    price_per_hour: FloatArray
    queue_depth: FloatArray
    running: FloatArray
    vram_free_frac: FloatArray
    utilization: FloatArray
    sent_since_update: FloatArray
    queue_age_s: float | FloatArray
    vram_age_s: float | FloatArray
    util_age_s: float | FloatArray
    cells: CellSummary
    rtt_s: FloatArray
    epoch: int = 0
    cell_slices: list[slice] = field(default_factory=list)

    def __post_init__(self) -> None:
        bounds = self.cell_start.tolist()
        self.cell_slices = [slice(a, b) for a, b in itertools.pairwise(bounds)]

    @property
    def n_nodes(self) -> int:
        """Number of target rows."""
        return int(self.cell_of.shape[0])

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.cell_start.shape[0] - 1)

    def cell_rows(self, cell: int) -> slice:
        """The rows of ``cell`` as a slice."""
        return self.cell_slices[cell]

    def load(self, rows: slice | IntArray) -> FloatArray:
        """Published (queued + running) plus router-local sends, per unit of capacity."""
        return (self.queue_depth[rows] + self.sent_since_update[rows]) / self.capacity[rows]


@dataclass(slots=True)
class Hedge:
    """Send a second copy to ``target`` if the first has not finished after ``delay_s``.

    With ``only_if_queued`` the copy is sent only while the first is still waiting for a
    batch slot: a request already being served is usually closer to done than a fresh copy.
    """

    target: int
    delay_s: float
    only_if_queued: bool = False


@dataclass(slots=True)
class Decision:
    """A routing decision: ranked targets (best first), an optional hedge, admission.

    ``admit=False`` means "reject now" (HTTP 429 with ``Retry-After: retry_after_s``).
    """

    targets: tuple[int, ...]
    hedge: Hedge | None = None
    admit: bool = True
    retry_after_s: float = 0.0


@dataclass(slots=True)
class Outcome:
    """Feedback on one finished request, given to :meth:`Strategy.observe`."""

    request_id: int
    kind: str
    target: int
    latency_s: float
    queue_s: float
    service_s: float
    met_slo: bool
    now: float


class Strategy(ABC):
    """Base class of every routing strategy.

    Subclasses set ``name`` and ``reads`` (the signals they use, for documentation and for
    the host to check) and implement :meth:`decide`. ``options`` are strategy-specific knobs
    from the config; unknown keys raise :class:`StrategyError`. ``seed`` feeds the
    strategy's own random generator so runs are reproducible.
    """

    name: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[Mapping[str, float]] = {}

    def __init__(self, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        opts = dict(options or {})
        unknown = sorted(set(opts) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "(none)"
            raise StrategyError(
                f"strategy {self.name!r}: unknown option {unknown[0]!r}; allowed: {allowed}"
            )
        self.options: dict[str, float] = {**self.defaults, **{k: float(v) for k, v in opts.items()}}
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        """Rank targets for ``request`` at time ``now`` (seconds, host clock)."""

    def observe(self, outcome: Outcome) -> None:  # noqa: B027 - optional hook
        """Learn from a finished request; the default ignores it."""
