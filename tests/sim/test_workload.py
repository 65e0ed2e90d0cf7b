"""Arrival processes, tenants and token distributions."""

from __future__ import annotations

import numpy as np
import pytest

from sim.config import Arrival, MmppState, TokenDist, to_dict
from sim.scenarios import example
from sim.testing import tiny_config
from sim.workload import arrival_times, generate, lognormal_tokens, mmpp_path, zipf_weights


def test_poisson_arrivals_have_the_configured_rate_and_exponential_gaps() -> None:
    rng = np.random.default_rng(1)
    t, _, _ = arrival_times(Arrival(process="poisson", rate_rps=50.0), 2000.0, rng)
    assert t.size / 2000.0 == pytest.approx(50.0, rel=0.02)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 50.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # CV of an exponential


def test_mmpp_dwell_times_and_rates_follow_the_states() -> None:
    arr = Arrival(
        process="mmpp",
        states=[MmppState(200.0, 30.0), MmppState(800.0, 30.0), MmppState(1500.0, 10.0)],
    )
    states, starts = mmpp_path(arr, 60000.0, np.random.default_rng(2))
    dwell = np.diff(np.append(starts, 60000.0))[:-1]
    s = states[:-1]
    for i, mean in enumerate((30.0, 30.0, 10.0)):
        assert dwell[s == i].mean() == pytest.approx(mean, rel=0.1)
    assert not (np.diff(states) == 0).any()  # a switch always changes state
    t, st, ts = arrival_times(arr, 3000.0, np.random.default_rng(3))
    seg = np.searchsorted(ts, t, side="right") - 1
    ends = np.append(ts[1:], 3000.0)
    for i, rate in enumerate((200.0, 800.0, 1500.0)):
        time_in = float((ends - ts)[st == i].sum())
        assert (st[seg] == i).sum() / time_in == pytest.approx(rate, rel=0.05)


def test_tenants_follow_zipf() -> None:
    cfg = tiny_config(
        duration_s=400.0,
        workload={**to_dict(tiny_config())["workload"], "tenants": {"count": 10, "zipf_s": 1.2}},
    )
    wl = generate(cfg)
    freq = np.bincount(wl.tenant, minlength=10) / wl.n
    assert freq == pytest.approx(zipf_weights(10, 1.2), abs=0.02)
    assert freq[0] > 3 * freq[4]


def test_lognormal_tokens_have_the_configured_median_and_shape() -> None:
    x = lognormal_tokens(
        TokenDist(median=300.0, sigma=0.6, max=100000), 200000, np.random.default_rng(4)
    )
    assert np.median(x) == pytest.approx(300.0, rel=0.02)
    assert np.log(x).std() == pytest.approx(0.6, rel=0.03)
    clipped = lognormal_tokens(
        TokenDist(median=300.0, sigma=2.0, max=500), 1000, np.random.default_rng(4)
    )
    assert clipped.max() <= 500 and clipped.min() >= 1


def test_request_kinds_and_prefixes_follow_the_weights() -> None:
    cfg = tiny_config()
    data = example("medium")
    data["duration_s"] = 5.0
    data["warmup_s"] = 0.5
    from sim.config import parse

    wl = generate(parse(data))
    share = np.bincount(wl.kind, minlength=3) / wl.n
    assert share == pytest.approx([0.7, 0.2, 0.1], abs=0.02)
    llm = wl.kind == 0
    assert (wl.prefix_group[llm] >= 0).mean() == pytest.approx(0.6, abs=0.02)
    assert (wl.prompt[llm & (wl.prefix_group >= 0)] > 600).all()
    assert generate(cfg).t.tolist() == generate(cfg).t.tolist()
