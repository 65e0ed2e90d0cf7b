"""GPU profiles, MIG instances and the fleet they form.

The numbers below are modelling assumptions for a mid-size LLM (order of 10B parameters),
not measurements; each one is a config key (``fleet.profiles``) so a team can replace them
with its own. A MIG instance is a node with a fraction of the parent's compute, its own
memory slice and a proportional price.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sim.config import Fleet, GpuProfile

__all__ = ["BUILTIN_PROFILES", "FleetArrays", "build_fleet", "catalog", "mig"]


def mig(parent: GpuProfile, fraction: float, vram_gb: float, weights_gb: float) -> GpuProfile:
    """A MIG instance of ``parent`` with ``fraction`` of its compute."""
    return dataclasses.replace(
        parent,
        prefill_tps=parent.prefill_tps * fraction,
        decode_tps=parent.decode_tps * min(1.0, 2.0 * fraction),
        max_batch=max(1, round(parent.max_batch * fraction)),
        vram_gb=vram_gb,
        weights_gb=weights_gb,
        price_per_hour=parent.price_per_hour * fraction,
        compute_scale=parent.compute_scale * fraction,
        prefix_cache_entries=max(1, round(parent.prefix_cache_entries * fraction)),
    )


_H100 = GpuProfile(
    prefill_tps=12000.0,
    decode_tps=60.0,
    max_batch=32,
    vram_gb=80.0,
    weights_gb=24.0,
    price_per_hour=4.0,
    compute_scale=1.0,
    batch_slowdown=0.03,
    prefix_cache_entries=32,
)
_A100 = GpuProfile(
    prefill_tps=6000.0,
    decode_tps=40.0,
    max_batch=24,
    vram_gb=80.0,
    weights_gb=24.0,
    price_per_hour=2.2,
    compute_scale=0.55,
    batch_slowdown=0.04,
    prefix_cache_entries=24,
)
_L40 = GpuProfile(
    prefill_tps=3500.0,
    decode_tps=28.0,
    max_batch=12,
    vram_gb=48.0,
    weights_gb=24.0,
    price_per_hour=1.1,
    compute_scale=0.35,
    batch_slowdown=0.05,
    prefix_cache_entries=12,
)

BUILTIN_PROFILES: dict[str, GpuProfile] = {
    "H100": _H100,
    "A100": _A100,
    "L40": _L40,
    # MIG slices serve a quantized copy of the model (smaller weights_gb)
    "H100-MIG-3g.40gb": mig(_H100, 3 / 7, 40.0, 14.0),
    "H100-MIG-2g.20gb": mig(_H100, 2 / 7, 20.0, 8.0),
    "A100-MIG-3g.40gb": mig(_A100, 3 / 7, 40.0, 14.0),
}


def catalog(extra: Mapping[str, GpuProfile] | None = None) -> dict[str, GpuProfile]:
    """Built-in profiles updated with ``extra`` (config ``fleet.profiles``)."""
    return {**BUILTIN_PROFILES, **dict(extra or {})}


@dataclass
class FleetArrays:
    """Static per-node columns, nodes of cell ``c`` at ``cell_start[c]:cell_start[c+1]``."""

    profile_names: list[str]
    profile_of: np.ndarray
    cell_of: np.ndarray
    cell_start: np.ndarray
    max_batch: np.ndarray
    prefill_tps: np.ndarray
    decode_tps: np.ndarray
    compute_scale: np.ndarray
    batch_slowdown: np.ndarray
    kv_capacity_gb: np.ndarray
    price_per_hour: np.ndarray
    cache_entries: np.ndarray

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return int(self.cell_of.shape[0])


def _counts(mix: Mapping[str, float], n: int) -> list[int]:
    """Split ``n`` nodes by shares with largest-remainder rounding (deterministic)."""
    names = list(mix)
    total = sum(mix.values())
    raw = [mix[k] / total * n for k in names]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(names)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def build_fleet(fleet: Fleet) -> FleetArrays:
    """Lay out every cell with the same profile mix (profiles interleaved within a cell)."""
    profiles = catalog(fleet.profiles)
    names = [k for k, v in fleet.mix.items() if v > 0]
    counts = _counts({k: fleet.mix[k] for k in names}, fleet.nodes_per_cell)
    per_cell = np.concatenate([np.full(c, i, dtype=np.int32) for i, c in enumerate(counts)])
    # a fixed shuffle, so any contiguous slice of a cell sees the mix
    per_cell = per_cell[np.random.default_rng(0).permutation(per_cell.size)]
    profile_of = np.tile(per_cell, fleet.cells)
    cell_of = np.repeat(np.arange(fleet.cells, dtype=np.int32), fleet.nodes_per_cell)
    cell_start = np.arange(fleet.cells + 1, dtype=np.int64) * fleet.nodes_per_cell
    prof = [profiles[k] for k in names]

    def col(attr: str, dtype: type = np.float64) -> np.ndarray:
        return np.array([getattr(p, attr) for p in prof], dtype=dtype)[profile_of]

    return FleetArrays(
        profile_names=names,
        profile_of=profile_of,
        cell_of=cell_of,
        cell_start=cell_start,
        max_batch=col("max_batch", np.int64),
        prefill_tps=col("prefill_tps"),
        decode_tps=col("decode_tps"),
        compute_scale=col("compute_scale"),
        batch_slowdown=col("batch_slowdown"),
        kv_capacity_gb=np.maximum(col("vram_gb") - col("weights_gb"), 0.0),
        price_per_hour=col("price_per_hour"),
        cache_entries=col("prefix_cache_entries", np.int64),
    )
