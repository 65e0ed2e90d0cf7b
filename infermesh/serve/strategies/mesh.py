"""The ``mesh`` family: signal-plane-aware routing that trusts signals by their age.

``mesh`` reads published queue depth, router-local sends, free VRAM, node speed, the cell
summaries and the RTT from the request's origin cell. It ranks cells by expected wait
(load x expected service / speed) plus RTT, then nodes in the best cell by expected wait.
A node's own queue signal is blended with its cell's mean in proportion to the signal's
age (``exp(-age / trust_s)``), so a stale snapshot does not send a burst to one node, and
nodes short of VRAM are penalized. It should beat ``least_loaded`` whenever signals are
stale and beat ``heuristic`` on heterogeneous fleets (it accounts for speed and RTT in
seconds, not in arbitrary weights).

``mesh_hedge`` adds a hedge for requests that run unusually slow, queued or in service.
It learns, per request kind, the ``hedge_quantile`` (default p95) of the ratio between a
request's latency and what it should take on its node (expected service at the node's
speed), and asks for a copy to the best node of the second-best cell (an independent
failure domain) after that quantile times the request's own expected time; the host
cancels the loser. Normalizing by the request's own expectation matters: a long LLM
request is long, not slow, and a fresh copy would not overtake it; a request on a
throttled or stalling node is slow, and a copy elsewhere wins. About ``1 - quantile`` of
requests reach their hedge time in steady state (the host may cap hedges further with a
budget), and hedges are only asked for while the chosen cell is below ``hedge_max_load``,
so hedging does not amplify overload. ``hedge_only_if_queued: 1`` restores the old
behaviour (hedge only requests still waiting for a batch slot).

``adaptive_mesh`` learns from outcomes: when the recent SLO-miss rate exceeds
``target_miss``, it weights load more than RTT (spreading wider), and it rejects requests
whose expected wait alone exceeds ``reject_slo_frac`` of their SLO (admission control
protects goodput under overload).
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
    ranked_rows,
    smallest_list,
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

_PRIOR_LOG_RATIO = math.log(3.0)
_MAX_PENDING = 65536


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
        self._cells = CellCache(self._cell_table)
        self._cell_lists = CellCache(cell_lists)
        self.w_rtt = self.options["w_rtt"]
        self._inv_trust = 1.0 / self.options["trust_s"]
        self._top_k = int(self.options["top_k"])

    def _cell_table(self, view: FleetView, _: int) -> tuple[np.ndarray, ...]:
        """Per-epoch cell columns: load/speed, 1/(capacity*speed), unavailable penalty."""
        load, inv_cap, inv_speed, penalty = cell_columns(view)
        return load * inv_speed, inv_cap * inv_speed, penalty

    def cell_scores(self, request: RequestView, view: FleetView, svc: float) -> np.ndarray:
        """Expected wait (s) per cell plus weighted RTT (``inf`` for cells with no node)."""
        load_s, inv_cs, penalty = self._cells.get(view, -1)
        wait = (load_s + view.cells.sent * inv_cs) * svc
        return wait + (self.w_rtt * view.rtt_s[request.origin_cell] + penalty)

    def _cell_columns(self, view: FleetView, cell: int) -> tuple[Any, ...]:
        """Per-epoch columns of ``cell``: (queue + 1)/(cap*speed), 1/(cap*speed), 1/speed,
        penalties (VRAM shortage and unavailability), and the cell's published load."""
        rows = view.cell_rows(cell)
        speed = view.speed[rows]
        short = view.vram_free_frac[rows] < self.options["vram_reserve"]
        penalty = short * 10.0 / speed + unavailable_penalty(view, rows)
        inv_cs = 1.0 / (view.capacity[rows] * speed)
        return (
            (view.queue_depth[rows] + 1.0) * inv_cs,
            inv_cs,
            1.0 / speed,
            penalty if penalty.any() else None,  # usually none: skip the addition
            float(view.cells.load[cell]),
            1.0 / max(float(view.cells.capacity[cell]), 1.0),
        )

    def node_scores(self, view: FleetView, cell: int, svc: float) -> np.ndarray:
        """Expected wait plus own service per row of ``cell``, in units of ``svc``.

        A node's load is ``(queue + sends + 1) / capacity``, blended with its cell's load
        by the trust ``exp(-age / trust_s)`` in its signal, divided by its speed; nodes
        short of VRAM get a penalty and unavailable ones ``inf``.
        """
        rows = view.cell_slices[cell]
        q1_cs, inv_cs, inv_s, penalty, load, inv_cap = self._cache.get(view, cell)
        age = view.queue_age_s
        if isinstance(age, float):
            trust: Any = math.exp(-age * self._inv_trust)
        else:
            trust = np.exp(-age[rows] * self._inv_trust)
        cell_load = load + float(view.cells.sent[cell]) * inv_cap
        own = view.sent_since_update[rows] * inv_cs + q1_cs
        scores = own * trust + inv_s * ((1.0 - trust) * cell_load)
        return scores if penalty is None else scores + penalty

    def best_cells(self, request: RequestView, view: FleetView, svc: float, k: int) -> list[int]:
        """The ``k`` cells with the lowest :meth:`cell_scores`, best first."""
        if view.n_cells > SMALL_CELLS:
            return smallest_list(self.cell_scores(request, view, svc), k)
        load, inv_cap, inv_speed, penalty, rtt = self._cell_lists.get(view, -1)
        w = self.w_rtt
        scores = [
            (ld + s * ic) * (svc * isp) + w * r + p
            for ld, s, ic, isp, r, p in zip(
                load,
                view.cells.sent.tolist(),
                inv_cap,
                inv_speed,
                rtt[request.origin_cell],
                penalty,
                strict=True,
            )
        ]
        return k_smallest(scores, k)

    def rank(
        self, request: RequestView, view: FleetView, k_cells: int = 1
    ) -> tuple[list[int], tuple[int, ...], float]:
        """Best cells, top rows of the best cell, and the expected service time."""
        svc = self.est.service_s(request)
        cells = self.best_cells(request, view, svc, k_cells)
        if not cells:
            return [], (0,), svc
        rows = ranked_rows(view, cells[0], self.node_scores(view, cells[0], svc), self._top_k)
        return cells, rows or (0,), svc

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        _, rows, _ = self.rank(request, view)
        return Decision(targets=rows)

    def observe(self, outcome: Outcome) -> None:
        self.est.update(outcome)


class MeshHedge(Mesh):
    """``mesh`` plus a hedge to the second-best cell when a request runs unusually slow."""

    name = "mesh_hedge"
    defaults: ClassVar[dict[str, float]] = {
        **Mesh.defaults,
        "hedge_max_load": 0.7,
        "hedge_quantile": 0.95,
        "hedge_factor": 1.0,
        "hedge_only_if_queued": 0.0,
        "quantile_step": 0.05,
    }

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        #: per kind: log of the ``hedge_quantile`` of latency / expected latency
        self.log_ratio_q: dict[str, float] = {}
        self.pending: dict[int, tuple[str, float]] = {}

    def expected_s(self, view: FleetView, target: int, svc: float) -> float:
        """What the request should take on ``target``: its service at the node's speed."""
        return svc / max(float(view.speed[target]), 1e-6)

    def hedge_delay_s(self, kind: str, expected_s: float) -> float:
        """Seconds after which the request counts as slow (the learned ratio quantile)."""
        lq = self.log_ratio_q.get(kind, _PRIOR_LOG_RATIO)
        return self.options["hedge_factor"] * expected_s * math.exp(lq)

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        cells, rows, svc = self.rank(request, view, k_cells=2)
        if not cells:
            return Decision(targets=rows)
        expected = self.expected_s(view, rows[0], svc)
        if len(self.pending) >= _MAX_PENDING:  # requests dropped before finishing
            del self.pending[next(iter(self.pending))]
        self.pending[request.request_id] = (request.kind, expected)
        if cell_load_now(view, cells[0]) > self.options["hedge_max_load"]:
            return Decision(targets=rows)
        if len(cells) > 1:
            alt = ranked_rows(view, cells[1], self.node_scores(view, cells[1], svc), 1)
        else:
            alt = rows[1:2]
        if not alt:
            return Decision(targets=rows)
        delay = self.hedge_delay_s(request.kind, expected)
        queued_only = self.options["hedge_only_if_queued"] > 0
        return Decision(
            targets=rows, hedge=Hedge(target=alt[0], delay_s=delay, only_if_queued=queued_only)
        )

    def observe(self, outcome: Outcome) -> None:
        super().observe(outcome)
        item = self.pending.pop(outcome.request_id, None)
        if item is None:
            return
        kind, expected = item
        # stochastic-gradient quantile estimate in log space: steps up by p when the
        # observation is above the estimate and down by 1 - p below, so it settles where
        # a share p of requests finish faster
        x = math.log(max(outcome.latency_s, 1e-9) / max(expected, 1e-9))
        p = self.options["hedge_quantile"]
        step = self.options["quantile_step"]
        lq = self.log_ratio_q.get(kind, _PRIOR_LOG_RATIO)
        self.log_ratio_q[kind] = lq + step * (p if x > lq else p - 1.0)


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
