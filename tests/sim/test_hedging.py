"""Hedging of slow requests (queued or in service), its budget, and slow-node faults."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from infermesh.serve.strategies.api import Outcome
from infermesh.serve.strategies.mesh import MeshHedge
from sim.config import SimConfig
from sim.engine import Status, simulate
from sim.metrics import summary
from sim.testing import fixed_workload, queueing_config, tiny_config


def _slow_fleet(slow_fraction: float, **overrides: Any) -> SimConfig:
    return tiny_config(
        duration_s=120.0,
        warmup_s=10.0,
        fleet={"cells": 2, "nodes_per_cell": 16, "mix": {"H100": 0.5, "L40": 0.5}},
        faults={"slow_fraction": slow_fraction, "slow_speed": 0.05},
        **overrides,
    )


def test_a_slow_window_stretches_service_by_the_lost_speed() -> None:
    cfg = queueing_config(
        servers=1,
        nodes=1,
        model="constant",
        mean_s=1.0,
        duration_s=10.0,
        faults={"slow_fraction": 1.0, "slow_speed": 0.5, "start_s": 0.0, "duration_s": 1.0},
    )
    res = simulate(cfg, "baseline_rr", fixed_workload(cfg, [0.0, 5.0]))
    # 0.5 s of work in the slow second, the other 0.5 s at full speed; later: 1 s
    assert math.isclose(res.service[0], 1.5, rel_tol=1e-9)
    assert math.isclose(res.service[1], 1.0, rel_tol=1e-9)


def test_mesh_hedge_cuts_the_tail_when_some_nodes_run_slow() -> None:
    cfg = _slow_fleet(0.1)
    plain = summary(cfg, simulate(cfg, "mesh"))
    res = simulate(cfg, "mesh_hedge")
    hedged = summary(cfg, res)
    assert hedged["latency_p99_s"] < 0.6 * plain["latency_p99_s"]
    assert hedged["slo_attainment"] >= plain["slo_attainment"]
    # the copies that win are copies of requests already being served on a slow node
    assert res.counters["hedges_in_service"] > 0.5 * res.counters["hedges_sent"]
    assert hedged["hedge_wins"] > 0.5 * hedged["hedges_sent"]
    done = res.status == Status.COMPLETED
    assert done.sum() == (res.status != Status.IN_FLIGHT).sum()
    # a request whose copy won still got its first token from the original when that one
    # had started: before the winning copy even started
    won = res.hedge_won
    assert (res.ttft[won] < res.latency[won] - res.service[won]).any()
    assert (res.ttft[won] <= res.latency[won]).all()


def test_mesh_hedge_changes_nothing_but_waste_on_a_healthy_fleet() -> None:
    cfg = _slow_fleet(0.0)
    plain = summary(cfg, simulate(cfg, "mesh"))
    hedged = summary(cfg, simulate(cfg, "mesh_hedge"))
    # about 1 - hedge_quantile of requests reach their hedge time; few copies win
    assert 0 < hedged["hedges_sent"] < 0.1 * hedged["arrived"]
    assert hedged["hedge_wins"] < 0.1 * hedged["hedges_sent"]
    assert math.isclose(hedged["latency_p50_s"], plain["latency_p50_s"], rel_tol=0.05)


def test_the_hedge_budget_caps_copies_as_a_share_of_arrivals() -> None:
    cfg = _slow_fleet(0.1, service={"hedge_budget": 0.01})
    res = simulate(cfg, "mesh_hedge")
    assert res.counters["hedges_over_budget"] > 0
    assert res.counters["hedges_sent"] <= 0.01 * res.workload.n + 1


def test_the_hedge_quantile_settles_at_the_requested_share() -> None:
    s = MeshHedge({"hedge_quantile": 0.9, "quantile_step": 0.01})
    rng = np.random.default_rng(1)
    ratios = np.exp(rng.normal(0.0, 0.5, 20000))
    for i, x in enumerate(ratios.tolist()):
        s.pending[i] = ("llm", 2.0)
        s.observe(
            Outcome(
                request_id=i,
                kind="llm",
                target=0,
                latency_s=2.0 * x,
                queue_s=0.0,
                service_s=2.0 * x,
                met_slo=True,
                now=float(i),
            )
        )
    learned = math.exp(s.log_ratio_q["llm"])
    assert math.isclose(learned, float(np.quantile(ratios, 0.9)), rel_tol=0.1)
    assert math.isclose(s.hedge_delay_s("llm", 2.0), 2.0 * learned)
