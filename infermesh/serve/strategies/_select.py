"""Selection helpers shared by the built-in strategies (cell first, then within a cell)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from infermesh.serve.strategies.api import FleetView, Outcome, RequestView

__all__ = [
    "SMALL_CELLS",
    "CellCache",
    "KindEstimator",
    "Uniforms",
    "best_cell",
    "cell_columns",
    "cell_lists",
    "cell_load_now",
    "k_smallest",
    "mean_service_s",
    "ranked_rows",
    "rows_age",
    "smallest",
    "smallest_list",
    "top_rows",
    "unavailable_penalty",
]

_INF = np.inf


def smallest_list(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` smallest finite scores, best first (fewer if not enough).

    One partition and a Python sort of ``k`` items: a decision calls this on every
    request, so it keeps numpy calls to two or three.
    """
    n = scores.shape[0]
    if n == 0:
        return []
    if k == 1:
        i = int(scores.argmin())
        return [i] if scores[i] < _INF else []
    idx = scores.argpartition(k - 1)[:k] if k < n else np.arange(n)
    vals = scores.take(idx).tolist()
    pairs = sorted(zip(vals, idx.tolist(), strict=True))
    return [i for v, i in pairs if v < _INF]


def smallest(scores: np.ndarray, k: int) -> np.ndarray:
    """:func:`smallest_list` as an integer array."""
    return np.array(smallest_list(scores, k), dtype=np.int64)


class CellCache:
    """Per-cell values derived from published columns, rebuilt when the view's epoch moves.

    ``build(view, cell)`` computes the value for one cell; it must read only columns that
    change with the epoch (not ``sent_since_update``).
    """

    def __init__(self, build: Callable[[FleetView, int], Any]) -> None:
        self.build = build
        self.epoch = -1
        self.data: dict[int, Any] = {}

    def get(self, view: FleetView, cell: int) -> Any:
        """The cached value for ``cell`` under the view's current epoch."""
        if view.epoch != self.epoch:
            self.data.clear()
            self.epoch = view.epoch
        value = self.data.get(cell)
        if value is None:
            value = self.data[cell] = self.build(view, cell)
        return value


class Uniforms:
    """Uniform [0, 1) draws taken from a generator in blocks (scalar draws are slow)."""

    def __init__(self, rng: np.random.Generator, block: int = 4096) -> None:
        self.rng = rng
        self.block = block
        self.buf: list[float] = []

    def next(self) -> float:
        """The next draw."""
        if not self.buf:
            self.buf = self.rng.random(self.block).tolist()
            self.buf.reverse()
        return self.buf.pop()


def cell_columns(view: FleetView, _: int = -1) -> tuple[np.ndarray, ...]:
    """Per-epoch cell columns: published load, 1/capacity, 1/speed, unavailable penalty.

    Use through a :class:`CellCache` (``cache.get(view, -1)``); add ``sent * inv_cap`` to
    the load for router-local sends.
    """
    c = view.cells
    return (
        c.load.copy(),
        1.0 / np.maximum(c.capacity, 1.0),
        1.0 / np.maximum(c.speed, 1e-6),
        np.where(c.available > 0, 0.0, _INF),
    )


#: Up to this many cells, per-decision cell scores are computed in pure Python: on a few
#: elements one numpy call costs more than the whole loop.
SMALL_CELLS = 32


def cell_lists(view: FleetView, _: int = -1) -> tuple[list[Any], ...]:
    """:func:`cell_columns` as Python lists plus the RTT matrix as lists (small fleets).

    Use through a :class:`CellCache` (``cache.get(view, -1)``) when ``view.n_cells`` is at
    most :data:`SMALL_CELLS`.
    """
    return (*(col.tolist() for col in cell_columns(view)), view.rtt_s.tolist())


def k_smallest(values: list[float], k: int) -> list[int]:
    """Indices of the ``k`` smallest finite ``values``, best first (ties: lower index)."""
    if k == 1:
        best = min(range(len(values)), key=values.__getitem__, default=-1)
        return [best] if best >= 0 and values[best] < _INF else []
    order = sorted(range(len(values)), key=values.__getitem__)[:k]
    return [i for i in order if values[i] < _INF]


def cell_load_now(view: FleetView, cell: int) -> float:
    """``view.cells.load_now()`` of one cell, without building the whole array."""
    c = view.cells
    return float(c.load[cell]) + float(c.sent[cell]) / max(float(c.capacity[cell]), 1.0)


def rows_age(age: float | np.ndarray, rows: slice) -> float | np.ndarray:
    """Signal age for ``rows``: the scalar itself, or the matching slice of per-row ages."""
    return age if isinstance(age, float) else age[rows]


def best_cell(view: FleetView, cell_scores: np.ndarray) -> int:
    """The cell with the lowest score among cells with an available node (-1 if none)."""
    scores = np.where(view.cells.available > 0, cell_scores, _INF)
    c = int(scores.argmin())
    return c if scores[c] < _INF else -1


def top_rows(view: FleetView, cell: int, node_scores: np.ndarray, k: int) -> tuple[int, ...]:
    """Top-``k`` rows of ``cell`` by ``node_scores`` (scores of that cell's rows only)."""
    rows = view.cell_rows(cell)
    scores = np.where(view.available[rows], node_scores, _INF)
    start = rows.start
    return tuple([i + start for i in smallest_list(scores, k)])


def ranked_rows(view: FleetView, cell: int, scores: np.ndarray, k: int) -> tuple[int, ...]:
    """Top-``k`` rows of ``cell`` for scores that already hold ``inf`` where unavailable."""
    start = view.cell_slices[cell].start
    return tuple([i + start for i in smallest_list(scores, k)])


def unavailable_penalty(view: FleetView, rows: slice) -> np.ndarray:
    """0 for available rows, ``inf`` for the others (add it to scores)."""
    return np.where(view.available[rows], 0.0, _INF)


def mean_service_s(prompt_tokens: int, output_tokens: int, kind: str) -> float:
    """A router's prior for the service time of a request on a reference GPU (seconds).

    Used until a strategy has learned per-kind service times from :meth:`observe`.
    """
    if kind == "llm":
        return prompt_tokens / 8000.0 + output_tokens / 60.0
    return 0.2


class KindEstimator:
    """Per-request-kind EWMAs of service time and latency (mean and mean deviation).

    Starts from :func:`mean_service_s` priors and learns from observed outcomes.
    """

    def __init__(self, alpha: float = 0.02) -> None:
        self.alpha = alpha
        self.service: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        self.latency_dev: dict[str, float] = {}

    def service_s(self, request: RequestView) -> float:
        """Expected service time of ``request`` on a reference node."""
        prior = mean_service_s(request.prompt_tokens, request.output_tokens, request.kind)
        learned = self.service.get(request.kind)
        if learned is None or request.kind == "llm":
            # token counts say more than the per-kind mean for LLM requests
            return prior if learned is None else 0.5 * prior + 0.5 * learned
        return learned

    def latency_tail_s(self, kind: str, default: float) -> float:
        """Roughly the 95th percentile of latency (mean + 2 mean deviations)."""
        mean = self.latency.get(kind)
        if mean is None:
            return default
        return mean + 2.0 * self.latency_dev.get(kind, 0.0)

    def update(self, outcome: Outcome) -> None:
        """Fold one outcome into the averages."""
        a = self.alpha
        k = outcome.kind
        s = self.service.get(k)
        self.service[k] = outcome.service_s if s is None else s + a * (outcome.service_s - s)
        m = self.latency.get(k)
        if m is None:
            self.latency[k] = outcome.latency_s
            self.latency_dev[k] = 0.0
        else:
            d = self.latency_dev[k]
            self.latency_dev[k] = d + a * (abs(outcome.latency_s - m) - d)
            self.latency[k] = m + a * (outcome.latency_s - m)
