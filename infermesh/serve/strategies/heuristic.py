"""``heuristic``: a fixed weighted score of load, utilization, VRAM and distance.

Reads published queue depth, utilization and free VRAM plus the cell RTT. Cells are ranked
by load and by RTT relative to the request's SLO, then nodes in the best cell by
``w_queue * load + w_util * utilization + w_vram * (1 - vram_free)``. It should beat
the baselines whenever signals are fresh enough to tell busy nodes from idle ones, and
it keeps requests close to their origin when the fleet is not busy.
"""

from __future__ import annotations

from typing import ClassVar

from infermesh.serve.strategies._select import best_cell, top_rows
from infermesh.serve.strategies.api import Decision, FleetView, RequestView, Strategy

__all__ = ["Heuristic"]


class Heuristic(Strategy):
    """Weighted score over published signals, cell first."""

    name = "heuristic"
    reads: ClassVar[tuple[str, ...]] = (
        "queue_depth",
        "utilization",
        "vram_free_frac",
        "rtt_s",
        "available",
    )
    defaults: ClassVar[dict[str, float]] = {
        "w_queue": 0.6,
        "w_util": 0.25,
        "w_vram": 0.15,
        "w_rtt": 1.0,
    }

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        o = self.options
        rtt = view.rtt_s[request.origin_cell]
        cell_scores = view.cells.load_now() + o["w_rtt"] * rtt / max(request.slo_s, 1e-3)
        cell = best_cell(view, cell_scores)
        if cell < 0:
            return Decision(targets=(0,))
        rows = view.cell_rows(cell)
        scores = (
            o["w_queue"] * view.load(rows)
            + o["w_util"] * view.utilization[rows]
            + o["w_vram"] * (1.0 - view.vram_free_frac[rows])
        )
        return Decision(targets=top_rows(view, cell, scores, 2))
