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

import bisect
from typing import ClassVar

import numpy as np

from infermesh.serve.strategies._select import Uniforms, best_cell, top_rows
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


class _Sampler:
    """Uniform draws of available nodes: a cell weighted by its available nodes, then one
    of that cell's available rows (the per-cell row lists are rebuilt once per epoch)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.u = Uniforms(rng)
        self.epoch = -1
        self.cum: list[float] = []
        self.rows: dict[int, np.ndarray] = {}

    def draw(self, view: FleetView) -> int:
        if view.epoch != self.epoch:
            self.epoch = view.epoch
            self.cum = np.cumsum(view.cells.available.astype(np.float64)).tolist()
            self.rows = {}
        total = self.cum[-1]
        if total <= 0:
            return int(self.u.next() * view.n_nodes)
        cell = min(bisect.bisect_right(self.cum, self.u.next() * total), len(self.cum) - 1)
        rows = self.rows.get(cell)
        if rows is None:
            sl = view.cell_rows(cell)
            rows = self.rows[cell] = np.flatnonzero(view.available[sl]) + sl.start
        return int(rows[int(self.u.next() * rows.size)])


class RandomChoice(Strategy):
    """A uniformly random available node."""

    name = "random"
    reads: ClassVar[tuple[str, ...]] = ("available",)

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self.sampler = _Sampler(self.rng)

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        a = self.sampler.draw(view)
        b = self.sampler.draw(view)
        return Decision(targets=(a, b) if a != b else (a,))


class LeastLoaded(Strategy):
    """The cell with the lowest published load, then its least loaded node (published only)."""

    name = "least_loaded"
    reads: ClassVar[tuple[str, ...]] = ("queue_depth", "capacity", "available")

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self._epoch = -1
        self._decision = Decision(targets=(0,))

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        # a pure function of published columns: the same until the view's epoch moves
        if view.epoch != self._epoch:
            self._epoch = view.epoch
            cell = best_cell(view, view.cells.load)
            if cell < 0:
                self._decision = Decision(targets=(0,))
            else:
                rows = view.cell_rows(cell)
                scores = view.queue_depth[rows] / view.capacity[rows]
                self._decision = Decision(targets=top_rows(view, cell, scores, 2))
        return self._decision


class PowerOfTwo(Strategy):
    """Two random available nodes; the one with the lower load (published + local sends)."""

    name = "power_of_two"
    reads: ClassVar[tuple[str, ...]] = ("queue_depth", "sent_since_update", "capacity", "available")

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self.sampler = _Sampler(self.rng)

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        a = self.sampler.draw(view)
        b = self.sampler.draw(view)
        q, sent, cap = view.queue_depth, view.sent_since_update, view.capacity
        la = (float(q[a]) + float(sent[a])) / float(cap[a])
        lb = (float(q[b]) + float(sent[b])) / float(cap[b])
        return Decision(targets=(a, b) if la <= lb else (b, a))
