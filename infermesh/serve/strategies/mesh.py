"""The ``mesh`` family: signal-plane-aware routing that trusts signals by their age.

``mesh`` reads published queue depth, router-local sends, free VRAM, node speed, the cell
summaries and the RTT from the request's origin cell. It ranks cells by expected wait
(load x expected service / speed) plus RTT, then nodes in the best cell by expected wait.
A node's own queue signal is blended with its cell's mean in proportion to the signal's
age (``exp(-age / trust_s)``), so a stale snapshot does not send a burst to one node, and
nodes short of VRAM are penalized. It should beat ``least_loaded`` whenever signals are
stale and beat ``heuristic`` on heterogeneous fleets (it accounts for speed and RTT in
seconds, not in arbitrary weights).

``mesh_hedge`` adds a hedge: if the first copy has not finished after roughly its p95
latency (learned per kind) and is still queued (``hedge_only_if_queued``; a request in
service is usually closer to done than a fresh copy), a copy goes to the best node of the
second-best cell (an independent failure domain); the host cancels the loser. Hedges are
only sent while the chosen cell is below ``hedge_max_load``, so hedging does not amplify
overload.

``adaptive_mesh`` learns from outcomes: when the recent SLO-miss rate exceeds
``target_miss``, it weights load more than RTT (spreading wider), and it rejects requests
whose expected wait alone exceeds ``reject_slo_frac`` of their SLO (admission control
protects goodput under overload).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from infermesh.serve.strategies._select import (
    CellCache,
    KindEstimator,
    cell_columns,
    ranked_rows,
    rows_age,
    smallest,
    unavailable_penalty,
)
from infermesh.serve.strategies.api import (
    Decision,
    FleetView,
    Hedge,
    Outcome,
    RequestView,
    Strategy,
)

__all__ = ["AdaptiveMesh", "Mesh", "MeshHedge"]


class Mesh(Strategy):
    """Age-aware expected-wait routing, cell first."""

    name = "mesh"
    reads: ClassVar[tuple[str, ...]] = (
        "queue_depth",
        "queue_age_s",
        "sent_since_update",
        "vram_free_frac",
        "speed",
        "rtt_s",
        "cells",
    )
    defaults: ClassVar[dict[str, float]] = {
        "trust_s": 2.0,
        "w_rtt": 1.0,
        "vram_reserve": 0.05,
        "top_k": 3,
    }

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self.est = KindEstimator()
        self._cache = CellCache(self._cell_columns)
        self._cells = CellCache(cell_columns)
        self.w_rtt = self.options["w_rtt"]

    def cell_scores(self, request: RequestView, view: FleetView, svc: float) -> np.ndarray:
        """Expected wait (s) per cell plus weighted RTT (``inf`` for cells with no node)."""
        load, inv_cap, inv_speed, penalty = self._cells.get(view, -1)
        wait = (load + view.cells.sent * inv_cap) * (svc * inv_speed)
        return wait + self.w_rtt * view.rtt_s[request.origin_cell] + penalty

    def _cell_columns(self, view: FleetView, cell: int) -> tuple[np.ndarray, ...]:
        """Per-epoch columns of ``cell``: queue + 1, 1/(cap*speed), 1/speed, penalties."""
        rows = view.cell_rows(cell)
        speed = view.speed[rows]
        short = view.vram_free_frac[rows] < self.options["vram_reserve"]
        penalty = short * 10.0 / speed + unavailable_penalty(view, rows)
        return (
            view.queue_depth[rows] + 1.0,
            1.0 / (view.capacity[rows] * speed),
            1.0 / speed,
            penalty,
        )

    def node_scores(self, view: FleetView, cell: int, svc: float) -> np.ndarray:
        """Expected wait plus own service per row of ``cell``, in units of ``svc``.

        A node's load is ``(queue + sends + 1) / capacity``, blended with its cell's load
        by the trust ``exp(-age / trust_s)`` in its signal, divided by its speed; nodes
        short of VRAM get a penalty and unavailable ones ``inf``.
        """
        rows = view.cell_rows(cell)
        q1, inv_cs, inv_s, penalty = self._cache.get(view, cell)
        age = rows_age(view.queue_age_s, rows)
        trust = np.exp(-np.asarray(age) / self.options["trust_s"])
        cells = view.cells
        cell_load = float(cells.load[cell]) + float(cells.sent[cell]) / max(
            float(cells.capacity[cell]), 1.0
        )
        own = (q1 + view.sent_since_update[rows]) * inv_cs
        return trust * own + ((1.0 - trust) * cell_load) * inv_s + penalty

    def rank(
        self, request: RequestView, view: FleetView, k_cells: int = 1
    ) -> tuple[list[int], tuple[int, ...], float]:
        """Best cells, top rows of the best cell, and the expected service time."""
        svc = self.est.service_s(request)
        cells = smallest(self.cell_scores(request, view, svc), k_cells).tolist()
        if not cells:
            return [], (0,), svc
        rows = ranked_rows(
            view, cells[0], self.node_scores(view, cells[0], svc), int(self.options["top_k"])
        )
        return cells, rows or (0,), svc

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        _, rows, _ = self.rank(request, view)
        return Decision(targets=rows)

    def observe(self, outcome: Outcome) -> None:
        self.est.update(outcome)


class MeshHedge(Mesh):
    """``mesh`` plus a hedge to the second-best cell after about the p95 latency."""

    name = "mesh_hedge"
    defaults: ClassVar[dict[str, float]] = {
        **Mesh.defaults,
        "hedge_max_load": 0.7,
        "hedge_factor": 1.0,
        "hedge_only_if_queued": 1.0,
    }

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        cells, rows, svc = self.rank(request, view, k_cells=2)
        if not cells or view.cells.load_now()[cells[0]] > self.options["hedge_max_load"]:
            return Decision(targets=rows)
        if len(cells) > 1:
            alt = ranked_rows(view, cells[1], self.node_scores(view, cells[1], svc), 1)
        else:
            alt = rows[1:2]
        if not alt:
            return Decision(targets=rows)
        delay = self.options["hedge_factor"] * self.est.latency_tail_s(request.kind, 3.0 * svc)
        queued_only = self.options["hedge_only_if_queued"] > 0
        return Decision(
            targets=rows, hedge=Hedge(target=alt[0], delay_s=delay, only_if_queued=queued_only)
        )


class AdaptiveMesh(Mesh):
    """``mesh`` whose RTT weight and admission follow the observed SLO-miss rate."""

    name = "adaptive_mesh"
    defaults: ClassVar[dict[str, float]] = {
        **Mesh.defaults,
        "target_miss": 0.01,
        "reject_slo_frac": 1.0,
        "adapt_rate": 0.01,
    }

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self.miss_rate = 0.0

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        cells, rows, svc = self.rank(request, view)
        if cells and request.attempt == 0:
            best = rows[0]
            queued = max(
                0.0, view.queue_depth[best] + view.sent_since_update[best] - view.capacity[best]
            )
            wait = queued / view.capacity[best] * svc / view.speed[best]
            if wait > self.options["reject_slo_frac"] * request.slo_s:
                return Decision(targets=rows, admit=False, retry_after_s=math.ceil(wait))
        return Decision(targets=rows)

    def observe(self, outcome: Outcome) -> None:
        super().observe(outcome)
        a = self.options["adapt_rate"]
        self.miss_rate += a * ((0.0 if outcome.met_slo else 1.0) - self.miss_rate)
        if self.miss_rate > self.options["target_miss"]:
            self.w_rtt = max(0.05, self.w_rtt * (1.0 - a))
        else:
            self.w_rtt = min(self.options["w_rtt"], self.w_rtt * (1.0 + a))
