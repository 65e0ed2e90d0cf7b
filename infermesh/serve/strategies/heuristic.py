"""``heuristic``: a fixed weighted score of load, utilization, VRAM and distance.

Reads published queue depth, utilization and free VRAM plus the cell RTT. Cells are ranked
by load and by RTT relative to the request's SLO, then nodes in the best cell by
``w_queue * load + w_util * utilization + w_vram * (1 - vram_free)``. It should beat
the baselines whenever signals are fresh enough to tell busy nodes from idle ones, and
it keeps requests close to their origin when the fleet is not busy.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from infermesh.serve.strategies._select import (
    SMALL_CELLS,
    CellCache,
    best_cell,
    cell_lists,
    k_smallest,
    ranked_rows,
)
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

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self._rows = CellCache(self._row_columns)
        self._cells = CellCache(cell_lists)

    def _row_columns(self, view: FleetView, cell: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-epoch parts of the node score of ``cell``: everything but router-local sends
        (``inf`` where unavailable), and the weight of one send."""
        o = self.options
        rows = view.cell_rows(cell)
        w_send = o["w_queue"] / view.capacity[rows]
        base = (
            view.queue_depth[rows] * w_send
            + o["w_util"] * view.utilization[rows]
            + o["w_vram"] * (1.0 - view.vram_free_frac[rows])
        )
        return np.where(view.available[rows], base, np.inf), w_send

    def best_cell(self, request: RequestView, view: FleetView) -> int:
        """The cell with the lowest load + RTT relative to the SLO (-1 if none)."""
        w = self.options["w_rtt"] / max(request.slo_s, 1e-3)
        if view.n_cells > SMALL_CELLS:
            rtt = view.rtt_s[request.origin_cell]
            return best_cell(view, view.cells.load_now() + w * rtt)
        load, inv_cap, _, penalty, rtt_rows = self._cells.get(view, -1)
        scores = [
            ld + s * ic + w * r + p
            for ld, s, ic, r, p in zip(
                load,
                view.cells.sent.tolist(),
                inv_cap,
                rtt_rows[request.origin_cell],
                penalty,
                strict=True,
            )
        ]
        best = k_smallest(scores, 1)
        return best[0] if best else -1

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        cell = self.best_cell(request, view)
        if cell < 0:
            return Decision(targets=(0,))
        base, w_send = self._rows.get(view, cell)
        scores = view.sent_since_update[view.cell_slices[cell]] * w_send + base
        return Decision(targets=ranked_rows(view, cell, scores, 2))
