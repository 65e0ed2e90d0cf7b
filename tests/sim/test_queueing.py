"""The engine against queueing theory: M/M/1, M/D/1 and M/M/c mean waits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.engine import Status, simulate
from sim.testing import queueing_config

_SLOW_SIGNALS = {
    "perfect": False,
    "queue_depth": {"period_s": 1000.0, "delay_s": 0.0},
    "vram": {"period_s": 1000.0, "delay_s": 0.0},
    "utilization": {"period_s": 1000.0, "delay_s": 0.0},
}


def _mean_wait(servers: int, model: str, rate: float, duration: float = 40000.0) -> float:
    cfg = queueing_config(
        servers=servers,
        model=model,
        rate_rps=rate,
        duration_s=duration,
        signals=_SLOW_SIGNALS,
        metrics_tick_s=1000.0,
    )
    res = simulate(cfg, "baseline_rr")
    measured = (res.workload.t >= cfg.warmup_s) & (res.status == Status.COMPLETED)
    assert measured.sum() > 0.9 * (res.workload.t >= cfg.warmup_s).sum()
    return float(np.mean(res.wait[measured]))


def _erlang_c_wait(c: int, lam: float, mu: float) -> float:
    a = lam / mu
    rho = a / c
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait / (c * mu - lam)


def test_mm1_mean_wait_matches_theory() -> None:
    lam = 0.7
    expected = lam / (1.0 - lam)  # rho / (mu - lambda) with mu = 1
    assert _mean_wait(1, "exponential", lam) == pytest.approx(expected, rel=0.1)


def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    lam = 0.7
    expected = lam / (2.0 * (1.0 - lam))
    assert _mean_wait(1, "constant", lam) == pytest.approx(expected, rel=0.1)


def test_mmc_mean_wait_matches_erlang_c() -> None:
    c, lam = 4, 3.2
    assert _mean_wait(c, "exponential", lam) == pytest.approx(_erlang_c_wait(c, lam, 1.0), rel=0.12)


def test_service_time_is_the_configured_mean_without_batch_slowdown() -> None:
    cfg = queueing_config(servers=4, model="constant", mean_s=2.0, rate_rps=1.0, duration_s=2000.0)
    res = simulate(cfg, "baseline_rr")
    done = res.status == Status.COMPLETED
    assert np.allclose(res.service[done], 2.0)
