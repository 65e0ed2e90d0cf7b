"""A simple autoscaler: release idle nodes after a timeout, add nodes with a cold start.

Every ``tick_s`` it releases nodes that have been idle for ``idle_timeout_s`` (most
expensive per unit of speed first, keeping ``min_nodes_per_cell`` per cell) and, in each
cell whose true load (running + queued over the slots of its powered nodes) exceeds
``scale_up_load``, powers on enough nodes to bring it back under (cheapest per unit of
speed first). A powered node costs money from power-on, but serves only after
``cold_start_s``. Provisioned time (the basis of cost) is the time each node is powered.
With ``enabled: false`` every node is powered for the whole run.
"""

from __future__ import annotations

import numpy as np

from sim.config import Autoscaler as AutoscalerConfig
from sim.hardware import FleetArrays

__all__ = ["Autoscaler"]


def _rank_within(cells: np.ndarray) -> np.ndarray:
    """Position of each element among equal, already grouped ``cells`` values (0, 1, ...)."""
    if cells.size == 0:
        return cells
    starts = np.r_[0, np.flatnonzero(np.diff(cells)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, cells.size]))
    return np.arange(cells.size) - first


class Autoscaler:
    """Tracks which nodes are powered and ready and acts on each tick."""

    def __init__(self, cfg: AutoscalerConfig, fleet: FleetArrays, available: np.ndarray) -> None:
        n = fleet.n_nodes
        self.cfg = cfg
        self.fleet = fleet
        self.available = available
        self.on = np.ones(n, dtype=bool)
        self.on_since = np.zeros(n)
        self.prov_acc = np.zeros(n)
        self.last_idle = [0.0] * n
        self.cost_per_speed = fleet.price_per_hour / fleet.compute_scale
        self.released = 0
        self.started = 0

    def tick(self, t: float, nb: list[int], qlen: list[int]) -> tuple[float, np.ndarray] | None:
        """Act at time ``t``; returns (ready time, nodes) for nodes that were powered on."""
        cfg = self.cfg
        f = self.fleet
        nb_a = np.array(nb)
        work = nb_a + np.array(qlen)
        idle_for = t - np.array(self.last_idle)
        idle = self.available & (work == 0) & (idle_for >= cfg.idle_timeout_s)
        ncell = f.cell_start.shape[0] - 1
        on_per_cell = np.bincount(f.cell_of, weights=self.on, minlength=ncell)
        allowed = np.maximum(on_per_cell - cfg.min_nodes_per_cell, 0)
        cand = np.flatnonzero(idle)
        if cand.size:
            order = np.lexsort((-self.cost_per_speed[cand], f.cell_of[cand]))
            cand = cand[order]
            cells = f.cell_of[cand]
            release = cand[_rank_within(cells) < allowed[cells]]
            self.on[release] = False
            self.available[release] = False
            self.prov_acc[release] += t - self.on_since[release]
            self.released += int(release.size)
        slots = np.bincount(f.cell_of, weights=f.max_batch * self.on, minlength=ncell)
        load = np.bincount(f.cell_of, weights=work * self.on, minlength=ncell)
        excess = load - cfg.scale_up_load * slots
        mean_batch = float(f.max_batch.mean())
        need = np.where(excess > 0, np.ceil(excess / (cfg.scale_up_load * mean_batch)), 0)
        off = np.flatnonzero(~self.on)
        if off.size == 0 or not need.any():
            return None
        order = np.lexsort((self.cost_per_speed[off], f.cell_of[off]))
        off = off[order]
        cells = f.cell_of[off]
        start = off[_rank_within(cells) < need[cells]]
        if start.size == 0:
            return None
        self.on[start] = True
        self.on_since[start] = t
        self.started += int(start.size)
        return t + cfg.cold_start_s, start

    def ready(self, nodes: np.ndarray, t: float) -> None:
        """Nodes powered on earlier finished their cold start."""
        nodes = nodes[self.on[nodes]]
        self.available[nodes] = True
        for n in nodes.tolist():
            self.last_idle[n] = t

    def provisioned(self, t_end: float) -> np.ndarray:
        """Powered seconds per node up to ``t_end``."""
        return self.prov_acc + np.where(self.on, t_end - self.on_since, 0.0)
