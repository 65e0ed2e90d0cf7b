"""Baseline strategies: round robin, random, least loaded and power of two choices.

- ``baseline_rr`` / ``round_robin`` reads only availability; it is the host's safe fallback.
- ``random`` reads availability; useful as a floor any load-aware strategy must beat.
- ``least_loaded`` reads published queue depth only; with stale signals every router
  sends to the same "least loaded" node until the next update (herding), which the
  simulator makes visible.
- ``power_of_two`` samples two available nodes and keeps the one with the lower load
  (published plus router-local sends). O(1) per request at any fleet size, and known to be
  robust to stale information.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from infermesh.serve.strategies._select import best_cell, top_rows
from infermesh.serve.strategies.api import Decision, FleetView, RequestView, Strategy

__all__ = ["LeastLoaded", "PowerOfTwo", "RandomChoice", "RoundRobin"]


class RoundRobin(Strategy):
    """Cycle over all nodes, skipping unavailable ones."""

    name = "baseline_rr"
    reads: ClassVar[tuple[str, ...]] = ("available",)

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self._cursor = 0

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        n = view.n_nodes
        i = self._cursor % n
        if not view.available[i]:
            ahead = np.flatnonzero(view.available[i:])
            if ahead.size:
                i += int(ahead[0])
            else:
                behind = np.flatnonzero(view.available[:i])
                i = int(behind[0]) if behind.size else i
        self._cursor = i + 1
        return Decision(targets=(i, (i + 1) % n))


def _random_available(view: FleetView, rng: np.random.Generator, tries: int = 8) -> int:
    """A uniformly random available node (capacity-weighted cell, then a row)."""
    weights = view.cells.available.astype(np.float64)
    total = weights.sum()
    if total <= 0:
        return int(rng.integers(view.n_nodes))
    for _ in range(tries):
        cell = int(np.searchsorted(np.cumsum(weights), rng.random() * total, side="right"))
        cell = min(cell, view.n_cells - 1)
        rows = view.cell_rows(cell)
        i = int(rng.integers(rows.start, rows.stop))
        if view.available[i]:
            return i
    avail = np.flatnonzero(view.available)
    return int(avail[rng.integers(avail.size)]) if avail.size else 0


class RandomChoice(Strategy):
    """A uniformly random available node."""

    name = "random"
    reads: ClassVar[tuple[str, ...]] = ("available",)

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        a = _random_available(view, self.rng)
        b = _random_available(view, self.rng)
        return Decision(targets=(a, b) if a != b else (a,))


class LeastLoaded(Strategy):
    """The cell with the lowest published load, then its least loaded node (published only)."""

    name = "least_loaded"
    reads: ClassVar[tuple[str, ...]] = ("queue_depth", "capacity", "available")

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        cell = best_cell(view, view.cells.load)
        if cell < 0:
            return Decision(targets=(0,))
        rows = view.cell_rows(cell)
        scores = view.queue_depth[rows] / view.capacity[rows]
        return Decision(targets=top_rows(view, cell, scores, 2))


class PowerOfTwo(Strategy):
    """Two random available nodes; the one with the lower load (published + local sends)."""

    name = "power_of_two"
    reads: ClassVar[tuple[str, ...]] = ("queue_depth", "sent_since_update", "capacity", "available")

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        a = _random_available(view, self.rng)
        b = _random_available(view, self.rng)
        la = (view.queue_depth[a] + view.sent_since_update[a]) / view.capacity[a]
        lb = (view.queue_depth[b] + view.sent_since_update[b]) / view.capacity[b]
        return Decision(targets=(a, b) if la <= lb else (b, a))
