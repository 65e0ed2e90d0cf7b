"""Continuous batching: shared speed, re-timing on batch change, events per request."""

from __future__ import annotations

import pytest

from sim.config import parse, to_dict
from sim.engine import Status, simulate
from sim.testing import fixed_workload, queueing_config


def _one_node(servers: int, slowdown: float):
    cfg = queueing_config(servers=servers, model="constant", rate_rps=1.0, duration_s=100.0)
    data = to_dict(cfg)
    data["service"]["model"] = "batching"
    data["fleet"]["profiles"]["Q"]["batch_slowdown"] = slowdown
    data["warmup_s"] = 0.0
    return parse(data)


def test_requests_in_one_batch_share_the_slowdown() -> None:
    cfg = _one_node(servers=2, slowdown=1.0)
    wl = fixed_workload(cfg, [0.0, 0.0], work_s=[2.0, 2.0], kind="vision")
    res = simulate(cfg, "baseline_rr", wl)
    # two at once: each runs at 1 / (1 + 1) speed, so 2 s of work takes 4 s
    assert res.service.tolist() == pytest.approx([4.0, 4.0])


def test_completion_is_retimed_when_the_batch_changes() -> None:
    cfg = _one_node(servers=2, slowdown=1.0)
    wl = fixed_workload(cfg, [0.0, 1.0], work_s=[2.0, 1.0], kind="vision")
    res = simulate(cfg, "baseline_rr", wl)
    # A alone for 1 s (1 s of work left), then both at half speed: both end at t = 3
    assert res.latency.tolist() == pytest.approx([3.0, 2.0])


def test_a_full_batch_makes_the_next_request_wait() -> None:
    cfg = _one_node(servers=1, slowdown=0.0)
    wl = fixed_workload(cfg, [0.0, 0.5], work_s=[2.0, 2.0], kind="vision")
    res = simulate(cfg, "baseline_rr", wl)
    assert res.wait.tolist() == pytest.approx([0.0, 1.5])
    assert (res.status == Status.COMPLETED).all()


def test_event_count_does_not_grow_with_output_tokens() -> None:
    base = queueing_config(servers=8, rate_rps=1.0, duration_s=100.0)
    data = to_dict(base)
    slow = {"period_s": 1e5, "delay_s": 0.0}
    data["signals"] = {"perfect": False, "queue_depth": slow, "vram": slow, "utilization": slow}
    data["metrics_tick_s"] = 1e5
    data["service"]["model"] = "batching"
    data["workload"]["request_types"] = {
        "llm": {"weight": 1.0, "slo_s": 1e6, "kv_mb_per_token": 0.0}
    }
    cfg = parse(data)
    times = [i * 0.5 for i in range(50)]
    short = simulate(cfg, "baseline_rr", fixed_workload(cfg, times, output_tokens=[10] * 50))
    long = simulate(cfg, "baseline_rr", fixed_workload(cfg, times, output_tokens=[10000] * 50))
    assert long.service.mean() > 100 * short.service.mean()
    # per request: node arrival + finish + re-timings; never one event per token
    assert long.events <= short.events + 10
    assert long.events < 5 * len(times) + 10
    assert (long.status == Status.COMPLETED).all()


def test_kv_memory_limits_the_batch() -> None:
    cfg = _one_node(servers=8, slowdown=0.0)
    data = to_dict(cfg)
    data["fleet"]["profiles"]["Q"].update(vram_gb=10.0, weights_gb=8.0)
    data["workload"]["request_types"] = {"vision": {"weight": 1.0, "slo_s": 100.0, "vram_gb": 1.5}}
    cfg = parse(data)
    wl = fixed_workload(cfg, [0.0, 0.0, 0.0], work_s=[1.0, 1.0, 1.0], kind="vision")
    res = simulate(cfg, "baseline_rr", wl)
    # 2 GB of KV budget holds one 1.5 GB request at a time
    assert sorted(res.wait.tolist()) == pytest.approx([0.0, 1.0, 2.0])
