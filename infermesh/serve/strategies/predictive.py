"""``predictive_mesh`` and ``hybrid_mesh``: route by predicted completion time.

``predictive_mesh`` reads published queue depth and its age, router-local sends, running
batch, node speed and capacity, and RTT. It projects each node's backlog forward over the
signal's age (a node drains about ``capacity x speed / service`` requests per second, so an
old snapshot of a busy node overstates its queue), adds the batching slowdown of joining
the node's running batch, and picks the node with the smallest predicted
``rtt + wait + service``. Service times are learned per request kind from outcomes. It
should win on heterogeneous fleets under load, where "least queued" and "fastest to finish"
differ.

``hybrid_mesh`` is ``predictive_mesh`` plus two things a production router wants: prefix
affinity (a request whose prefix group has a home node in the chosen cell goes there if
its predicted latency is within ``affinity_slack`` service times of the best, so prefix
caches hit) and cost-aware packing (while the cell is below ``pack_load``, cheaper
capacity per unit of speed is preferred, which lets an autoscaler release expensive
nodes). It should win on cost per token and on LLM TTFT when prefixes are shared.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from infermesh.serve.strategies._select import (
    SMALL_CELLS,
    CellCache,
    KindEstimator,
    cell_columns,
    cell_lists,
    cell_load_now,
    k_smallest,
    smallest_list,
    unavailable_penalty,
)
from infermesh.serve.strategies.api import Decision, FleetView, Outcome, RequestView, Strategy
from infermesh.serve.strategies.prefix_affinity import hash_order

__all__ = ["HybridMesh", "PredictiveMesh"]


class PredictiveMesh(Strategy):
    """Smallest predicted ``rtt + wait + service``, cell first."""

    name = "predictive_mesh"
    reads: ClassVar[tuple[str, ...]] = (
        "queue_depth",
        "queue_age_s",
        "running",
        "sent_since_update",
        "speed",
        "capacity",
        "rtt_s",
        "cells",
    )
    defaults: ClassVar[dict[str, float]] = {"batch_slowdown": 0.5, "top_k": 3}

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self.est = KindEstimator()
        self._cache = CellCache(self._cell_columns)
        self._cells = CellCache(cell_columns)
        self._cell_lists = CellCache(cell_lists)
        self._bs1 = self.options["batch_slowdown"] - 1.0
        self._top_k = int(self.options["top_k"])

    def predict_cells(self, request: RequestView, view: FleetView, svc: float) -> np.ndarray:
        """Predicted latency (s) for the mean node of each cell."""
        load, inv_cap, inv_speed, penalty = self._cells.get(view, -1)
        x = load + view.cells.sent * inv_cap
        # max(x - 1, 0) + b min(x, 1) + 1 == x + (b - 1) min(x, 1) + 1
        factor1 = x + self._bs1 * np.minimum(x, 1.0) + 1.0
        return view.rtt_s[request.origin_cell] + factor1 * (svc * inv_speed) + penalty

    def best_cell(self, request: RequestView, view: FleetView, svc: float) -> tuple[int, Any]:
        """The cell with the lowest predicted latency (-1 if none) and all predictions
        (a list or an array; ``inf`` for cells without an available node)."""
        if view.n_cells > SMALL_CELLS:
            pred: Any = self.predict_cells(request, view, svc)
            best = smallest_list(pred, 1)
        else:
            load, inv_cap, inv_speed, penalty, rtt = self._cell_lists.get(view, -1)
            b1 = self._bs1
            pred = []
            for ld, s, ic, isp, r, p in zip(
                load,
                view.cells.sent.tolist(),
                inv_cap,
                inv_speed,
                rtt[request.origin_cell],
                penalty,
                strict=True,
            ):
                x = ld + s * ic
                pred.append(r + (x + b1 * (x if x < 1.0 else 1.0) + 1.0) * (svc * isp) + p)
            best = k_smallest(pred, 1)
        return (best[0] if best else -1), pred

    def _cell_columns(self, view: FleetView, cell: int) -> tuple[Any, ...]:
        """Per-epoch columns of ``cell`` derived from the published queue depth, each
        divided by capacity: backlog beyond the batch, drain rate per second of age,
        batch + 1; then 1/capacity, 1/speed and the unavailable penalty."""
        rows = view.cell_rows(cell)
        cap = view.capacity[rows]
        speed = view.speed[rows]
        q = view.queue_depth[rows]
        inv_cap = 1.0 / cap
        penalty = unavailable_penalty(view, rows)
        return (
            np.maximum(q - cap, 0.0) * inv_cap,
            speed,
            (np.minimum(q, cap) + 1.0) * inv_cap,
            inv_cap,
            1.0 / speed,
            penalty if penalty.any() else None,  # usually none: skip the addition
        )

    def predict_rows(self, view: FleetView, cell: int, svc: float) -> np.ndarray:
        """Predicted wait + service (s) for each row of ``cell`` (``inf`` if unavailable).

        The published backlog beyond the batch is drained at ``capacity x speed / svc``
        requests per second over the signal's age, router-local sends are added, and the
        request then waits for a slot (if the batch is full) and runs at a speed reduced
        by ``batch_slowdown`` times the batch fill.
        """
        over, speed, base, inv_cap, inv_speed, penalty = self._cache.get(view, cell)
        rows = view.cell_slices[cell]
        age = view.queue_age_s
        drained = (age if isinstance(age, float) else age[rows]) / max(svc, 1e-6)
        # all in units of capacity: (backlog - drained) clipped at 0, + batch + 1 + sends
        x = np.maximum(over - speed * drained, 0.0) + base + view.sent_since_update[rows] * inv_cap
        factor1 = x + self._bs1 * np.minimum(x, 1.0) + 1.0
        pred = factor1 * (svc * inv_speed)
        return pred if penalty is None else pred + penalty

    def choose(self, request: RequestView, view: FleetView) -> tuple[int, np.ndarray, float]:
        """Best cell, per-row predictions in it, and the expected service time."""
        svc = self.est.service_s(request)
        cell, _ = self.best_cell(request, view, svc)
        if cell < 0:
            return -1, np.empty(0), svc
        return cell, self.predict_rows(view, cell, svc), svc

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        cell, pred, _ = self.choose(request, view)
        if cell < 0:
            return Decision(targets=(0,))
        start = view.cell_slices[cell].start
        rows = tuple([i + start for i in smallest_list(pred, self._top_k)])
        return Decision(targets=rows or (start,))

    def observe(self, outcome: Outcome) -> None:
        self.est.update(outcome)


def _relative_price(view: FleetView, cell: int) -> np.ndarray:
    """Price per unit of speed of each row of ``cell`` relative to the cell's mean."""
    rows = view.cell_rows(cell)
    price = view.price_per_hour[rows] / view.speed[rows]
    return price / max(float(np.mean(price)), 1e-9)


class HybridMesh(PredictiveMesh):
    """Predictive routing plus prefix affinity and cost-aware packing."""

    name = "hybrid_mesh"
    reads: ClassVar[tuple[str, ...]] = (*PredictiveMesh.reads, "prefix_group", "price_per_hour")
    defaults: ClassVar[dict[str, float]] = {
        **PredictiveMesh.defaults,
        "affinity_slack": 0.25,
        "pack_load": 0.5,
        "w_price": 0.3,
    }

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self._price = CellCache(_relative_price)

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        o = self.options
        svc = self.est.service_s(request)
        cell, cell_pred = self.best_cell(request, view, svc)
        origin = request.origin_cell
        if cell < 0:
            return Decision(targets=(0,))
        # stay in the origin cell when it is nearly as good: prefix homes live there
        p_origin = float(cell_pred[origin])
        if math.isfinite(p_origin) and p_origin <= cell_pred[cell] + o["affinity_slack"] * svc:
            cell = origin
        rows = view.cell_slices[cell]
        pred = self.predict_rows(view, cell, svc)
        if cell_load_now(view, cell) < o["pack_load"]:
            pred = pred + (o["w_price"] * svc) * self._price.get(view, cell)
        ranked = [i + rows.start for i in smallest_list(pred, self._top_k)]
        if not ranked:
            return Decision(targets=(rows.start,))
        if request.prefix_group >= 0:
            best_pred = pred[ranked[0] - rows.start]
            for home in hash_order(request.prefix_group, rows, 2):
                h = int(home)
                if pred[h - rows.start] <= best_pred + o["affinity_slack"] * svc:
                    ranked = [h, *(r for r in ranked if r != h)]
                    break
        return Decision(targets=tuple(ranked))
