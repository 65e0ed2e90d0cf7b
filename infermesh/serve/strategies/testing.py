"""A fake :class:`FleetView` builder for strategy tests (router and simulator alike)."""

from __future__ import annotations

import numpy as np

from infermesh.serve.strategies.api import CellSummary, FleetView, RequestView

__all__ = ["make_request", "make_view"]


def make_view(
    cells: int = 2,
    nodes_per_cell: int = 8,
    queue_depth: np.ndarray | None = None,
    capacity: float = 8.0,
    speed: np.ndarray | None = None,
    price: np.ndarray | None = None,
    age_s: float = 0.0,
    rtt_s: np.ndarray | None = None,
) -> FleetView:
    """A view with consistent cell summaries; every node available unless changed after."""
    n = cells * nodes_per_cell
    q = np.zeros(n) if queue_depth is None else np.asarray(queue_depth, dtype=np.float64)
    sp = np.ones(n) if speed is None else np.asarray(speed, dtype=np.float64)
    pr = np.full(n, 2.0) if price is None else np.asarray(price, dtype=np.float64)
    cap = np.full(n, capacity)
    cell_of = np.repeat(np.arange(cells), nodes_per_cell)
    starts = np.arange(cells) * nodes_per_cell
    per = np.add.reduceat
    ccap = per(cap, starts)
    summary = CellSummary(
        available=np.full(cells, nodes_per_cell),
        capacity=ccap,
        load=per(q, starts) / ccap,
        free_slots=ccap - per(q, starts),
        speed=per(cap * sp, starts) / ccap,
        price_per_hour=per(pr, starts) / nodes_per_cell,
        sent=np.zeros(cells),
    )
    return FleetView(
        cell_of=cell_of,
        cell_start=np.arange(cells + 1) * nodes_per_cell,
        available=np.ones(n, dtype=bool),
        capacity=cap,
        speed=sp,
        price_per_hour=pr,
        queue_depth=q,
        running=np.minimum(q, cap),
        vram_free_frac=np.ones(n),
        utilization=np.minimum(q / cap, 1.0),
        sent_since_update=np.zeros(n),
        queue_age_s=age_s,
        vram_age_s=age_s,
        util_age_s=age_s,
        cells=summary,
        rtt_s=np.full((cells, cells), 0.01) if rtt_s is None else rtt_s,
    )


def make_request(
    request_id: int = 0, kind: str = "llm", prefix_group: int = -1, origin_cell: int = 0
) -> RequestView:
    """A request with typical LLM sizes."""
    return RequestView(
        request_id=request_id,
        kind=kind,
        tenant=0,
        prompt_tokens=400,
        output_tokens=200,
        prefix_group=prefix_group,
        origin_cell=origin_cell,
        slo_s=15.0,
    )
