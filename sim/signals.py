"""The signal plane as routers see it: sampled node state, published late, with ages.

Each metric (queue depth, free VRAM, utilization) is sampled every ``period_s`` and becomes
visible ``delay_s`` later; its age at a decision is ``now - sample time``. Between queue
updates the router adds its own sends (``sent_since_update``), which a real router knows.
Cell summaries are recomputed when the queue or VRAM signal is published. With
``perfect: true`` the view is refreshed from the true state before every decision.
"""

from __future__ import annotations

import numpy as np

from infermesh.serve.strategies.api import CellSummary, FleetView
from sim.hardware import FleetArrays
from sim.network import NetworkModel

__all__ = ["SignalPlane"]


class SignalPlane:
    """Owns the :class:`FleetView` given to strategies and keeps it as stale as configured."""

    def __init__(self, fleet: FleetArrays, net: NetworkModel, available: np.ndarray) -> None:
        n = fleet.n_nodes
        self.fleet = fleet
        self.capacity = fleet.max_batch.astype(np.float64)
        self.kv_cap = np.maximum(fleet.kv_capacity_gb, 1e-9)
        self.sent_cum = np.zeros(n)
        self.q_time = 0.0
        self.v_time = 0.0
        self.u_time = 0.0
        self._busy_prev = np.zeros(n)
        self._busy_prev_t = 0.0
        c = fleet.cell_start.shape[0] - 1
        cells = CellSummary(
            available=np.zeros(c, np.int64),
            capacity=np.zeros(c),
            load=np.zeros(c),
            free_slots=np.zeros(c),
            speed=np.zeros(c),
            price_per_hour=np.zeros(c),
            sent=np.zeros(c),
        )
        self.view = FleetView(
            cell_of=fleet.cell_of,
            cell_start=fleet.cell_start,
            available=available,
            capacity=self.capacity,
            speed=fleet.compute_scale,
            price_per_hour=fleet.price_per_hour,
            queue_depth=np.zeros(n),
            running=np.zeros(n),
            vram_free_frac=np.ones(n),
            utilization=np.zeros(n),
            sent_since_update=np.zeros(n),
            queue_age_s=0.0,
            vram_age_s=0.0,
            util_age_s=0.0,
            cells=cells,
            rtt_s=net.rtt_s,
        )
        self.refresh_cells()

    # ------------------------------------------------------------------ per decision
    def set_ages(self, now: float) -> None:
        """Set the age of each published metric for a decision at ``now``."""
        v = self.view
        v.queue_age_s = now - self.q_time
        v.vram_age_s = now - self.v_time
        v.util_age_s = now - self.u_time

    def note_sent(self, node: int, cell: int) -> None:
        """Count a request this router sent to ``node``."""
        self.sent_cum[node] += 1.0
        self.view.sent_since_update[node] += 1.0
        self.view.cells.sent[cell] += 1.0

    # ------------------------------------------------------------------ sampling
    @staticmethod
    def sample_queue(
        nb: list[int], qlen: list[int], sent_cum: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """True (running, queued + running) and the send counters at sampling time."""
        running = np.array(nb, dtype=np.float64)
        return running, running + np.array(qlen, dtype=np.float64), sent_cum.copy()

    def publish_queue(
        self, t_sample: float, sample: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> None:
        """Make a queue sample visible; router-local sends after it stay counted."""
        running, depth, sent_then = sample
        v = self.view
        v.running = running
        v.queue_depth = depth
        v.sent_since_update = self.sent_cum - sent_then
        self.q_time = t_sample
        self.refresh_cells()

    def sample_vram(self, kv_used: list[float]) -> np.ndarray:
        """True free VRAM fraction of the KV budget."""
        return 1.0 - np.array(kv_used) / self.kv_cap

    def publish_vram(self, t_sample: float, free: np.ndarray) -> None:
        """Make a VRAM sample visible."""
        self.view.vram_free_frac = free
        self.view.epoch += 1
        self.v_time = t_sample

    def sample_util(self, t: float, busy_total: np.ndarray) -> np.ndarray:
        """Busy fraction of each node since the previous utilization sample."""
        dt = t - self._busy_prev_t
        util = (busy_total - self._busy_prev) / dt if dt > 0 else np.zeros_like(busy_total)
        self._busy_prev = busy_total
        self._busy_prev_t = t
        return np.clip(util, 0.0, 1.0)

    def publish_util(self, t_sample: float, util: np.ndarray) -> None:
        """Make a utilization sample visible."""
        self.view.utilization = util
        self.view.epoch += 1
        self.u_time = t_sample

    def refresh_cells(self) -> None:
        """Recompute cell summaries from the published columns and availability."""
        v = self.view
        v.epoch += 1
        starts = self.fleet.cell_start[:-1]
        avail = v.available.astype(np.float64)
        cap = self.capacity * avail

        def per_cell(x: np.ndarray) -> np.ndarray:
            return np.add.reduceat(x, starts)

        c = v.cells
        c.available[:] = per_cell(avail).astype(np.int64)
        c.capacity[:] = per_cell(cap)
        safe = np.maximum(c.capacity, 1.0)
        c.load[:] = per_cell(v.queue_depth * avail) / safe
        c.free_slots[:] = c.capacity - per_cell(v.queue_depth * avail)
        c.speed[:] = per_cell(cap * v.speed) / safe
        c.price_per_hour[:] = per_cell(v.price_per_hour * avail) / np.maximum(c.available, 1)
        c.sent[:] = per_cell(v.sent_since_update * avail)
