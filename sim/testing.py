"""Shared fakes for tests and experiments: tiny configs, hand-made workloads, a recorder.

Kept in the package (not rebuilt in every test file) so that tests and notebooks build
scenarios the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from infermesh.serve.strategies.api import Decision, FleetView, RequestView, Strategy
from infermesh.serve.strategies.registry import default_registry
from sim.config import SimConfig, parse
from sim.workload import Workload

__all__ = ["RecordingStrategy", "fixed_workload", "queueing_config", "tiny_config"]


def queueing_config(
    servers: int = 1,
    nodes: int = 1,
    model: str = "exponential",
    mean_s: float = 1.0,
    rate_rps: float = 0.7,
    duration_s: float = 20000.0,
    seed: int = 7,
    **overrides: Any,
) -> SimConfig:
    """One cell of identical nodes with ``servers`` slots each and no network delay."""
    data: dict[str, Any] = {
        "name": "queueing",
        "seed": seed,
        "duration_s": duration_s,
        "warmup_s": min(200.0, duration_s / 10),
        "drain_s": 10000.0,
        "fleet": {
            "cells": 1,
            "nodes_per_cell": nodes,
            "mix": {"Q": 1.0},
            "profiles": {"Q": {"max_batch": servers, "batch_slowdown": 0.0, "compute_scale": 1.0}},
        },
        "network": {
            "spread_ms": 0.0,
            "height_ms": 0.0,
            "intra_cell_gbps": 1e9,
            "inter_cell_gbps": 1e9,
        },
        "workload": {
            "arrival": {"process": "poisson", "rate_rps": rate_rps},
            "request_types": {
                "vision": {"weight": 1.0, "slo_s": 1000.0, "request_kb": 0, "response_kb": 0}
            },
        },
        "service": {"model": model, "mean_s": mean_s, "max_queue_per_node": 1000000},
    }
    for key, value in overrides.items():
        data[key] = value
    return parse(data)


def tiny_config(**overrides: Any) -> SimConfig:
    """A small heterogeneous LLM scenario that runs in well under a second."""
    data: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "duration_s": 20.0,
        "warmup_s": 2.0,
        "drain_s": 60.0,
        "fleet": {"cells": 2, "nodes_per_cell": 8, "mix": {"H100": 0.5, "L40": 0.5}},
        "workload": {
            "arrival": {"process": "poisson", "rate_rps": 20.0},
            "request_types": {
                "llm": {
                    "weight": 1.0,
                    "slo_s": 15.0,
                    "prompt_tokens": {"median": 300, "sigma": 0.5, "max": 4096},
                    "output_tokens": {"median": 100, "sigma": 0.5, "max": 1024},
                    "prefix_fraction": 0.5,
                    "prefix_tokens": 200,
                }
            },
            "tenants": {"count": 5, "zipf_s": 1.0},
        },
    }
    data.update(overrides)
    return parse(data)


def fixed_workload(
    cfg: SimConfig,
    times: Sequence[float],
    work_s: Sequence[float] | None = None,
    output_tokens: Sequence[int] | None = None,
    prompt_tokens: Sequence[int] | None = None,
    kind: str | None = None,
) -> Workload:
    """A hand-made workload: requests at ``times`` with the given work or token counts."""
    n = len(times)
    kinds = tuple(k for k in ("llm", "vision", "asr") if k in cfg.workload.request_types)
    k = kinds.index(kind) if kind else 0
    return Workload(
        t=np.asarray(times, dtype=np.float64),
        kind=np.full(n, k, dtype=np.int8),
        tenant=np.zeros(n, np.int64),
        origin=np.zeros(n, np.int64),
        prompt=np.asarray(prompt_tokens if prompt_tokens is not None else [1] * n, np.int64),
        output=np.asarray(output_tokens if output_tokens is not None else [1] * n, np.int64),
        prefix_group=np.full(n, -1, np.int64),
        prefix_tokens=np.zeros(n, np.int64),
        work_s=np.asarray(work_s if work_s is not None else [1.0] * n, np.float64),
        req_bytes=np.zeros(n),
        resp_bytes=np.zeros(n),
        kinds=kinds,
        mmpp_states=np.empty(0, np.int64),
        mmpp_times=np.empty(0),
    )


class RecordingStrategy(Strategy):
    """Round robin that records the signal age and the target of every decision."""

    name = "recorder"
    reads: ClassVar[tuple[str, ...]] = ("queue_depth",)
    log: ClassVar[list[tuple[float, float, int]]] = []

    def __init__(self, options: dict[str, float] | None = None, seed: int = 0) -> None:
        super().__init__(options, seed)
        self._i = 0
        RecordingStrategy.log = []

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        i = self._i % view.n_nodes
        self._i += 1
        age = (
            view.queue_age_s if isinstance(view.queue_age_s, float) else float(view.queue_age_s[i])
        )
        RecordingStrategy.log.append((now, age, i))
        return Decision(targets=(i,))


default_registry.register("recorder", "sim.testing:RecordingStrategy")
