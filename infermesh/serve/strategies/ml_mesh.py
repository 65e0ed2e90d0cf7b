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

from infermesh.serve.strategies._select import smallest
from infermesh.serve.strategies.api import Decision, FleetView, Outcome, RequestView
from infermesh.serve.strategies.predictive import PredictiveMesh

__all__ = ["MlEnhancedMesh"]

_N_FEATURES = 7
_MAX_PENDING = 65536


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

    def _features(
        self, request: RequestView, view: FleetView, idx: np.ndarray, pred: np.ndarray, cell: int
    ) -> np.ndarray:
        n = idx.shape[0]
        x = np.empty((n, _N_FEATURES))
        x[:, 0] = 1.0
        x[:, 1] = pred
        x[:, 2] = view.load(idx)
        x[:, 3] = view.utilization[idx]
        x[:, 4] = 1.0 - view.vram_free_frac[idx]
        x[:, 5] = view.rtt_s[request.origin_cell, cell]
        age = view.queue_age_s
        x[:, 6] = age if isinstance(age, float) else age[idx]
        return x

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        cell, pred, _ = self.choose(request, view)
        if cell < 0:
            return Decision(targets=(0,))
        start = view.cell_rows(cell).start
        short = smallest(pred, int(self.options["shortlist"]))
        if short.size == 0:
            return Decision(targets=(start,))
        idx = short + start
        x = self._features(request, view, idx, pred[short], cell)
        w = self.weights.get(request.kind)
        if w is None:
            w = np.zeros(_N_FEATURES)
            w[1] = 1.0  # start as predictive_mesh: latency = predicted wait + service
            self.weights[request.kind] = w
        order = np.argsort(x @ w, kind="stable")
        if order.size > 1 and self.rng.random() < self.options["explore"]:
            order[[0, 1]] = order[[1, 0]]
        ranked = tuple(int(idx[i]) for i in order[:3])
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
