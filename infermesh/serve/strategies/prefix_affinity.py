"""``prefix_affinity``: send requests that share a prompt prefix to the same node.

Reads the request's prefix group, published load and RTT. Each prefix group has a home
node inside a cell, chosen by rendezvous (highest-random-weight) hashing so homes move
little when nodes come and go. The request goes to its origin cell unless that cell is
busier than ``spill_load``, then to the home node unless that node's load exceeds
``spill_load`` (then to the next node in hash order, then to the least loaded). It wins
when prefix caching saves a large share of prefill work; it loses balance under skew.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np

from infermesh.serve.strategies._select import CellCache, best_cell, cell_load_now, ranked_rows
from infermesh.serve.strategies.api import Decision, FleetView, RequestView, Strategy

__all__ = ["PrefixAffinity", "hash_order"]

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)


@functools.lru_cache(maxsize=65536)
def _hash_order(key: int, start: int, stop: int, k: int) -> tuple[int, ...]:
    rows = slice(start, stop)
    idx = np.arange(rows.start, rows.stop, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (idx + np.uint64(key + 1) * _M1) * _M2
        h ^= h >> np.uint64(31)
        h *= _M1
    k = min(k, h.shape[0])
    top = np.argpartition(-h.astype(np.float64), k - 1)[:k]
    top = top[np.argsort(-h[top].astype(np.float64), kind="stable")]
    return tuple(int(i) + start for i in top)


def hash_order(key: int, rows: slice, k: int) -> tuple[int, ...]:
    """The first ``k`` rows of ``rows`` in rendezvous-hash order for ``key`` (memoized)."""
    return _hash_order(key, rows.start, rows.stop, k)


class PrefixAffinity(Strategy):
    """Rendezvous-hash prefix groups onto nodes of the origin cell, spilling when busy."""

    name = "prefix_affinity"
    reads: ClassVar[tuple[str, ...]] = (
        "prefix_group",
        "queue_depth",
        "sent_since_update",
        "rtt_s",
        "available",
    )
    defaults: ClassVar[dict[str, float]] = {"spill_load": 1.0, "probes": 3}

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self._rows = CellCache(_load_columns)

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        spill = self.options["spill_load"]
        cell = request.origin_cell
        if view.cells.available[cell] == 0 or cell_load_now(view, cell) > spill:
            load = view.cells.load_now()
            cell = best_cell(view, load + view.rtt_s[request.origin_cell])
            if cell < 0:
                return Decision(targets=(0,))
        rows = view.cell_slices[cell]
        q_cap, inv_cap = self._rows.get(view, cell)
        load_rows = view.sent_since_update[rows] * inv_cap + q_cap  # inf where unavailable
        if request.prefix_group >= 0:
            order = hash_order(request.prefix_group, rows, int(self.options["probes"]))
            for i in order:
                if load_rows[i - rows.start] <= spill:
                    return Decision(targets=(i, *ranked_rows(view, cell, load_rows, 1)))
        return Decision(targets=ranked_rows(view, cell, load_rows, 2))


def _load_columns(view: FleetView, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch published load per unit of capacity (``inf`` where unavailable), 1/capacity."""
    rows = view.cell_rows(cell)
    inv_cap = 1.0 / view.capacity[rows]
    q_cap = np.where(view.available[rows], view.queue_depth[rows] * inv_cap, np.inf)
    return q_cap, inv_cap
