"""Network model: Vivaldi-style cell coordinates, RTT and transfer time.

Each cell gets a 2-D coordinate (ms) and a height (its access-link latency), as Vivaldi
network coordinates do; the RTT between cells ``a`` and ``b`` is
``|x_a - x_b| + h_a + h_b``. A request from origin cell ``o`` served in cell ``c`` pays
the RTT (half each way) plus its payload over the intra-cell bandwidth when ``o == c``,
otherwise over the inter-cell bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import Network

__all__ = ["NetworkModel", "build_network"]


@dataclass
class NetworkModel:
    """RTT matrix (s) between cells and per-pair bandwidth (bytes/s)."""

    coords_ms: np.ndarray
    height_ms: np.ndarray
    rtt_s: np.ndarray
    bandwidth_Bps: np.ndarray

    def one_way_s(self, origin: int, cell: int, nbytes: float) -> float:
        """Half the RTT plus the transfer time of ``nbytes``."""
        return 0.5 * float(self.rtt_s[origin, cell]) + nbytes / float(
            self.bandwidth_Bps[origin, cell]
        )


def build_network(cfg: Network, n_cells: int, seed: int) -> NetworkModel:
    """Place ``n_cells`` cells at random coordinates (seeded) and derive RTTs."""
    rng = np.random.default_rng([seed, 1])
    coords = rng.uniform(0.0, cfg.spread_ms, size=(n_cells, 2))
    height = (
        rng.exponential(cfg.height_ms, size=n_cells) if cfg.height_ms > 0 else np.zeros(n_cells)
    )
    diff = coords[:, None, :] - coords[None, :, :]
    dist = np.sqrt((diff**2).sum(axis=2))
    rtt_ms = dist + height[:, None] + height[None, :]
    bw = np.full((n_cells, n_cells), cfg.inter_cell_gbps * 1e9 / 8.0)
    np.fill_diagonal(bw, cfg.intra_cell_gbps * 1e9 / 8.0)
    return NetworkModel(coords_ms=coords, height_ms=height, rtt_s=rtt_ms / 1000.0, bandwidth_Bps=bw)
