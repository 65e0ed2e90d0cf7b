"""``ml_enhanced_mesh``: an online linear model of latency picks among mesh's candidates.

Reads everything ``predictive_mesh`` reads plus utilization and free VRAM. ``predictive_mesh``
short-lists ``shortlist`` nodes in the best cell; a linear model per request kind, trained
online (normalized least mean squares) on the outcomes the host reports, predicts each
candidate's latency from its features (predicted wait and service, load, utilization,
VRAM use, RTT, signal age) and the lowest prediction wins. With probability ``explore``
the second candidate is taken so the model sees more than its own choices. It should win
where the hand-written predictor is biased (e.g. batching slows nodes more than assumed);
with little traffic it behaves like ``predictive_mesh``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from infermesh.serve.strategies._select import CellCache, Uniforms, smallest_list
from infermesh.serve.strategies.api import Decision, FleetView, Outcome, RequestView
from infermesh.serve.strategies.predictive import PredictiveMesh

__all__ = ["MlEnhancedMesh"]

_N_FEATURES = 7
_MAX_PENDING = 65536


def _row_features(view: FleetView, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch feature rows of ``cell`` (published parts; the rest is filled per
    decision) and 1/capacity: [1, -, queue/capacity, utilization, VRAM used, -, -]."""
    rows = view.cell_rows(cell)
    inv_cap = 1.0 / view.capacity[rows]
    x = np.zeros((inv_cap.shape[0], _N_FEATURES))
    x[:, 0] = 1.0
    x[:, 2] = view.queue_depth[rows] * inv_cap
    x[:, 3] = view.utilization[rows]
    x[:, 4] = 1.0 - view.vram_free_frac[rows]
    return x, inv_cap


class MlEnhancedMesh(PredictiveMesh):
    """Predictive short-list, online linear latency model for the final pick."""

    name = "ml_enhanced_mesh"
    reads: ClassVar[tuple[str, ...]] = (*PredictiveMesh.reads, "utilization", "vram_free_frac")
    defaults: ClassVar[dict[str, float]] = {
        **PredictiveMesh.defaults,
        "shortlist": 8,
        "learning_rate": 0.05,
        "explore": 0.02,
    }

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self.weights: dict[str, np.ndarray] = {}
        self.pending: dict[int, tuple[str, np.ndarray]] = {}
        self._u = Uniforms(self.rng)
        self._rows = CellCache(_row_features)
        self._short = int(self.options["shortlist"])

    def _features(
        self, request: RequestView, view: FleetView, short: np.ndarray, pred: np.ndarray, cell: int
    ) -> np.ndarray:
        """Feature rows of the short-listed rows ``short`` (indices within ``cell``)."""
        base, inv_cap = self._rows.get(view, cell)
        x = base.take(short, axis=0)
        x[:, 1] = pred.take(short)
        rows = view.cell_slices[cell]
        x[:, 2] += view.sent_since_update[rows].take(short) * inv_cap.take(short)
        x[:, 5] = view.rtt_s[request.origin_cell, cell]
        age = view.queue_age_s
        x[:, 6] = age if isinstance(age, float) else age[rows].take(short)
        return x

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        cell, pred, _ = self.choose(request, view)
        if cell < 0:
            return Decision(targets=(0,))
        start = view.cell_slices[cell].start
        short = np.array(smallest_list(pred, self._short), dtype=np.int64)
        if short.size == 0:
            return Decision(targets=(start,))
        x = self._features(request, view, short, pred, cell)
        w = self.weights.get(request.kind)
        if w is None:
            w = np.zeros(_N_FEATURES)
            w[1] = 1.0  # start as predictive_mesh: latency = predicted wait + service
            self.weights[request.kind] = w
        order = (x @ w).argsort(kind="stable").tolist()
        if len(order) > 1 and self._u.next() < self.options["explore"]:
            order[0], order[1] = order[1], order[0]
        rows = short.tolist()
        ranked = tuple([rows[i] + start for i in order[:3]])
        if len(self.pending) >= _MAX_PENDING:  # requests dropped before finishing
            del self.pending[next(iter(self.pending))]
        self.pending[request.request_id] = (request.kind, x[order[0]])
        return Decision(targets=ranked)

    def observe(self, outcome: Outcome) -> None:
        super().observe(outcome)
        self.learn(outcome.request_id, outcome.latency_s)

    def learn(self, request_id: int, latency_s: float) -> None:
        """One NLMS step on the features recorded when ``request_id`` was routed."""
        item = self.pending.pop(request_id, None)
        if item is None:
            return
        kind, x = item
        w = self.weights[kind]
        err = latency_s - float(x @ w)
        w += self.options["learning_rate"] * err * x / (1e-6 + float(x @ x))
