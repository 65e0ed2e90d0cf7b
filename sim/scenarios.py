"""Example scenarios written by ``infermesh sim generate``.

- ``small``: 4 cells x 128 nodes, Poisson 800 req/s for 300 s, LLM only.
- ``medium``: 16 x 256 nodes, Poisson 3,000 req/s for 600 s, LLM/vision/ASR 0.7/0.2/0.1,
  200 Zipf(1.1) tenants, shared prefixes.
- ``large``: 128 x 1,024 = 131,072 nodes including MIG slices, 1,800 s of a 3-state MMPP
  at 200/800/1,500 req/s (dwell 30/30/10 s), autoscaler on.
- ``xlarge``: 1,024 x 1,024 = 1,048,576 nodes, 60 s of Poisson 2,000 req/s (a scale test).
"""

from __future__ import annotations

from typing import Any

from sim.config import dump, parse

__all__ = ["EXAMPLES", "example", "example_yaml"]

_LLM: dict[str, Any] = {
    "weight": 1.0,
    "slo_s": 15.0,
    "ttft_slo_s": 2.0,
    "prompt_tokens": {"median": 400, "sigma": 0.9, "max": 8192},
    "output_tokens": {"median": 200, "sigma": 0.7, "max": 2048},
    "kv_mb_per_token": 0.5,
    "prefix_fraction": 0.6,
    "prefix_groups_per_tenant": 4,
    "prefix_tokens": 600,
}
_VISION: dict[str, Any] = {
    "weight": 0.2,
    "slo_s": 1.0,
    "work_s": {"median": 0.08, "sigma": 0.5, "max": 5},
    "vram_gb": 1.0,
    "request_kb": 300.0,
    "response_kb": 1.0,
}
_ASR: dict[str, Any] = {
    "weight": 0.1,
    "slo_s": 3.0,
    "work_s": {"median": 0.4, "sigma": 0.6, "max": 20},
    "vram_gb": 1.5,
    "request_kb": 400.0,
    "response_kb": 2.0,
}


def _base(name: str, cells: int, nodes: int, duration: float) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 42,
        "duration_s": duration,
        "warmup_s": min(30.0, duration / 10),
        "drain_s": 120.0,
        "metrics_tick_s": 10.0,
        "fleet": {
            "cells": cells,
            "nodes_per_cell": nodes,
            "mix": {"H100": 0.5, "A100": 0.3, "L40": 0.2},
        },
        "network": {
            "spread_ms": 40.0,
            "height_ms": 1.0,
            "intra_cell_gbps": 100.0,
            "inter_cell_gbps": 10.0,
        },
        "signals": {
            "perfect": False,
            "queue_depth": {"period_s": 1.0, "delay_s": 0.2},
            "vram": {"period_s": 5.0, "delay_s": 0.5},
            "utilization": {"period_s": 5.0, "delay_s": 0.5},
        },
        "service": {
            "model": "batching",
            "max_queue_per_node": 64,
            "max_retries": 2,
            "retry_backoff_s": 0.05,
        },
        "autoscaler": {"enabled": False},
        "router": {"latency_budget_ms": 2.0, "enforce_budget": False},
        "strategies": [],
    }


def _small() -> dict[str, Any]:
    cfg = _base("small", 4, 128, 300.0)
    cfg["workload"] = {
        "arrival": {"process": "poisson", "rate_rps": 800.0},
        "request_types": {"llm": {**_LLM, "prefix_fraction": 0.5}},
        "tenants": {"count": 50, "zipf_s": 1.0},
    }
    return cfg


def _medium() -> dict[str, Any]:
    cfg = _base("medium", 16, 256, 600.0)
    cfg["workload"] = {
        "arrival": {"process": "poisson", "rate_rps": 3000.0},
        "request_types": {"llm": {**_LLM, "weight": 0.7}, "vision": _VISION, "asr": _ASR},
        "tenants": {"count": 200, "zipf_s": 1.1},
    }
    return cfg


def _large() -> dict[str, Any]:
    cfg = _base("large", 128, 1024, 1800.0)
    cfg["fleet"]["mix"] = {
        "H100": 0.35,
        "A100": 0.25,
        "L40": 0.15,
        "H100-MIG-3g.40gb": 0.15,
        "H100-MIG-2g.20gb": 0.10,
    }
    cfg["workload"] = {
        "arrival": {
            "process": "mmpp",
            "states": [
                {"rate_rps": 200.0, "dwell_s": 30.0},
                {"rate_rps": 800.0, "dwell_s": 30.0},
                {"rate_rps": 1500.0, "dwell_s": 10.0},
            ],
        },
        "request_types": {"llm": {**_LLM, "weight": 0.7}, "vision": _VISION, "asr": _ASR},
        "tenants": {"count": 1000, "zipf_s": 1.1},
    }
    cfg["signals"]["queue_depth"] = {"period_s": 2.0, "delay_s": 0.5}
    cfg["autoscaler"] = {
        "enabled": True,
        "tick_s": 10.0,
        "idle_timeout_s": 120.0,
        "cold_start_s": 60.0,
        "min_nodes_per_cell": 16,
        "scale_up_load": 0.7,
    }
    return cfg


def _xlarge() -> dict[str, Any]:
    cfg = _base("xlarge", 1024, 1024, 60.0)
    cfg["warmup_s"] = 5.0
    cfg["drain_s"] = 60.0
    cfg["workload"] = {
        "arrival": {"process": "poisson", "rate_rps": 2000.0},
        "request_types": {"llm": {**_LLM, "weight": 0.7}, "vision": _VISION, "asr": _ASR},
        "tenants": {"count": 5000, "zipf_s": 1.1},
    }
    cfg["signals"]["queue_depth"] = {"period_s": 5.0, "delay_s": 0.5}
    cfg["signals"]["utilization"] = {"period_s": 10.0, "delay_s": 0.5}
    cfg["signals"]["vram"] = {"period_s": 10.0, "delay_s": 0.5}
    return cfg


EXAMPLES = {"small": _small, "medium": _medium, "large": _large, "xlarge": _xlarge}


def example(kind: str) -> dict[str, Any]:
    """The example scenario ``kind`` as plain data (validated)."""
    data = EXAMPLES[kind]()
    parse(data)
    return data


def example_yaml(kind: str) -> str:
    """The example scenario ``kind`` as YAML text, every key spelled out."""
    return dump(parse(example(kind)))
