"""Workload generation: arrival times and per-request attributes, all up front with numpy.

Every strategy in a comparison sees the same requests (common random numbers): the
workload depends only on the config and its seed.

- Arrivals: Poisson at a fixed rate, or a Markov-modulated Poisson process whose state
  dwell times are exponential with the configured means and whose next state is drawn
  uniformly among the others.
- Kinds: ``llm`` / ``vision`` / ``asr`` by weight. LLM prompt and output tokens are
  lognormal (median, sigma) clipped to [1, max]; a ``prefix_fraction`` of LLM requests
  start with one of their tenant's shared prefixes (``prefix_tokens`` long).
- Tenants: Zipf(``zipf_s``) over ``count`` tenants; each tenant has a home cell, the
  request's origin for the network model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import REQUEST_KINDS, Arrival, SimConfig, TokenDist

__all__ = ["Workload", "arrival_times", "generate", "lognormal_tokens", "mmpp_path", "zipf_weights"]


@dataclass
class Workload:
    """Columns of the generated requests, sorted by arrival time."""

    t: np.ndarray
    kind: np.ndarray
    tenant: np.ndarray
    origin: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    prefix_group: np.ndarray
    prefix_tokens: np.ndarray
    work_s: np.ndarray
    req_bytes: np.ndarray
    resp_bytes: np.ndarray
    kinds: tuple[str, ...]
    mmpp_states: np.ndarray
    mmpp_times: np.ndarray

    @property
    def n(self) -> int:
        """Number of requests."""
        return int(self.t.shape[0])


def mmpp_path(
    arr: Arrival, duration: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """State sequence and the start time of each segment until ``duration``."""
    k = len(arr.states)
    dwell = np.array([s.dwell_s for s in arr.states])
    states: list[int] = [int(rng.integers(k))]
    starts: list[float] = [0.0]
    t = 0.0
    while True:
        t += float(rng.exponential(dwell[states[-1]]))
        if t >= duration:
            break
        nxt = int(rng.integers(k - 1))
        nxt += nxt >= states[-1]
        states.append(nxt)
        starts.append(t)
    return np.array(states, dtype=np.int64), np.array(starts)


def _poisson(rate: float, t0: float, t1: float, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.poisson(rate * (t1 - t0)))
    return np.sort(rng.uniform(t0, t1, size=n))


def arrival_times(
    arr: Arrival, duration: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival times in [0, duration) and the MMPP path (empty for Poisson)."""
    if arr.process == "poisson":
        return _poisson(arr.rate_rps, 0.0, duration, rng), np.empty(0, np.int64), np.empty(0)
    states, starts = mmpp_path(arr, duration, rng)
    ends = np.append(starts[1:], duration)
    parts = [
        _poisson(arr.states[s].rate_rps, a, b, rng)
        for s, a, b in zip(states, starts, ends, strict=True)
    ]
    return np.concatenate(parts), states, starts


def lognormal_tokens(d: TokenDist, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws of ``median * exp(sigma * Z)`` rounded and clipped to [1, max]."""
    x = d.median * np.exp(d.sigma * rng.standard_normal(n))
    return np.clip(np.rint(x), 1, d.max).astype(np.int64)


def zipf_weights(count: int, s: float) -> np.ndarray:
    """Normalized Zipf weights ``1 / k**s`` for ranks 1..count."""
    w = 1.0 / np.arange(1, count + 1, dtype=np.float64) ** s
    return w / w.sum()


def generate(cfg: SimConfig) -> Workload:
    """Generate the requests of ``cfg`` (deterministic in ``cfg.seed``)."""
    wl = cfg.workload
    rng = np.random.default_rng([cfg.seed, 0])
    t, mstates, mtimes = arrival_times(wl.arrival, cfg.duration_s, rng)
    n = t.shape[0]
    kinds = tuple(k for k in REQUEST_KINDS if k in wl.request_types)
    weights = np.array([wl.request_types[k].weight for k in kinds])
    kind = np.asarray(rng.choice(len(kinds), size=n, p=weights / weights.sum()), np.int8)
    tc = wl.tenants
    tenant = np.asarray(rng.choice(tc.count, size=n, p=zipf_weights(tc.count, tc.zipf_s)), np.int64)
    home = np.random.default_rng([cfg.seed, 2]).integers(cfg.fleet.cells, size=tc.count)
    origin = home[tenant].astype(np.int64)
    prompt = np.zeros(n, np.int64)
    output = np.zeros(n, np.int64)
    prefix_group = np.full(n, -1, np.int64)
    prefix_tokens = np.zeros(n, np.int64)
    work = np.zeros(n)
    req_bytes = np.zeros(n)
    resp_bytes = np.zeros(n)
    draws = rng.standard_exponential(n)  # for the exponential service model
    for ki, name in enumerate(kinds):
        rt = wl.request_types[name]
        idx = np.flatnonzero(kind == ki)
        m = idx.size
        req_bytes[idx] = rt.request_kb * 1024.0
        resp_bytes[idx] = rt.response_kb * 1024.0
        if name == "llm":
            prompt[idx] = lognormal_tokens(rt.prompt_tokens, m, rng)
            output[idx] = lognormal_tokens(rt.output_tokens, m, rng)
            shared = rng.random(m) < rt.prefix_fraction
            g = rt.prefix_groups_per_tenant
            groups = tenant[idx] * g + rng.integers(g, size=m)
            prefix_group[idx] = np.where(shared & (rt.prefix_tokens > 0), groups, -1)
            prefix_tokens[idx] = np.where(prefix_group[idx] >= 0, rt.prefix_tokens, 0)
            prompt[idx] += prefix_tokens[idx]
            req_bytes[idx] += 4.0 * prompt[idx]
            resp_bytes[idx] += 4.0 * output[idx]
        else:
            work[idx] = rt.work_s.median * np.exp(rt.work_s.sigma * rng.standard_normal(m))
    if cfg.service.model == "constant":
        work[:] = cfg.service.mean_s
    elif cfg.service.model == "exponential":
        work[:] = cfg.service.mean_s * draws
    return Workload(
        t=t,
        kind=kind,
        tenant=tenant,
        origin=origin,
        prompt=prompt,
        output=output,
        prefix_group=prefix_group,
        prefix_tokens=prefix_tokens,
        work_s=work,
        req_bytes=req_bytes,
        resp_bytes=resp_bytes,
        kinds=kinds,
        mmpp_states=mstates,
        mmpp_times=mtimes,
    )
