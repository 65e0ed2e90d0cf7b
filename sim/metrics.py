"""Turn a :class:`~sim.engine.RunResult` into the tables a user reads.

Requests that arrive before ``warmup_s`` are left out of request metrics; fleet metrics
(utilization, cost) cover the whole run. Every number is rounded to 6 significant digits
so files are stable and readable. Columns are documented in ``docs/SIMULATOR.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sim.config import SimConfig
from sim.engine import RunResult, Status

__all__ = [
    "CDF_POINTS",
    "QUANTILES",
    "arm_kind_rows",
    "arm_rows",
    "cdf_rows",
    "per_kind_rows",
    "summary",
    "timeseries_rows",
]

QUANTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9))
CDF_POINTS = np.linspace(0.0, 100.0, 201)


def _r(x: float | int) -> float | int | None:
    """Round to 6 significant digits; NaN becomes None (empty in CSV, null in JSON)."""
    if isinstance(x, (int, np.integer)):
        return int(x)
    xf = float(x)
    if math.isnan(xf) or math.isinf(xf):
        return None
    return float(f"{xf:.6g}")


def _quantiles(values: np.ndarray, prefix: str) -> dict[str, float | int | None]:
    v = values[~np.isnan(values)]
    if v.size == 0:
        return {f"{prefix}_{name}_s": None for name, _ in QUANTILES}
    qs = np.percentile(v, [q for _, q in QUANTILES])
    return {f"{prefix}_{name}_s": _r(q) for (name, _), q in zip(QUANTILES, qs, strict=True)}


def _request_stats(cfg: SimConfig, res: RunResult, mask: np.ndarray, kind: str) -> dict[str, Any]:
    wl = res.workload
    span = cfg.duration_s - cfg.warmup_s
    st = res.status[mask]
    done = mask & (res.status == Status.COMPLETED)
    lat = res.latency[done]
    kinds = [kind] if kind != "all" else list(wl.kinds)
    slo_ok = np.zeros(done.sum(), dtype=bool)
    kind_done = wl.kind[done]
    ttft = res.ttft[done]
    for name in kinds:
        rt = cfg.workload.request_types[name]
        sel = kind_done == wl.kinds.index(name)
        ok = lat[sel] <= rt.slo_s
        if name == "llm" and rt.ttft_slo_s > 0:
            ok &= ttft[sel] <= rt.ttft_slo_s
        slo_ok[sel] = ok
    llm = wl.kinds.index("llm") if "llm" in wl.kinds else -1
    is_llm_done = done & (wl.kind == llm)
    tokens = float((wl.prompt[is_llm_done] + wl.output[is_llm_done]).sum())
    n = int(mask.sum())
    row: dict[str, Any] = {
        "kind": kind,
        "arrived": n,
        "completed": int((st == Status.COMPLETED).sum()),
        "rejected": int((st == Status.REJECTED).sum()),
        "dropped": int((st == Status.DROPPED).sum()),
        "unfinished": int((st == Status.IN_FLIGHT).sum()),
        "slo_met": int(slo_ok.sum()),
        "slo_attainment": _r(slo_ok.sum() / n) if n else None,
        "throughput_rps": _r(done.sum() / span),
        "goodput_rps": _r(slo_ok.sum() / span),
        "tokens_per_s": _r(tokens / span),
    }
    row.update(_quantiles(res.latency[done], "latency"))
    row.update(_quantiles(res.wait[done], "queue_wait"))
    row.update(_quantiles(res.service[done], "service"))
    ttft_vals = res.ttft[is_llm_done] if kind in ("llm", "all") else np.empty(0)
    row.update(_quantiles(ttft_vals, "ttft"))
    row["latency_mean_s"] = _r(float(lat.mean())) if lat.size else None
    row["queue_wait_mean_s"] = _r(float(res.wait[done].mean())) if lat.size else None
    row["hedged"] = int(res.hedged[mask].sum())
    row["hedge_wins"] = int(res.hedge_won[mask].sum())
    row["retried"] = int((res.attempts[mask] > 0).sum())
    llm_n = int((mask & (wl.kind == llm) & (wl.prefix_group >= 0)).sum())
    row["prefix_cache_hit_rate"] = _r(res.cache_hit[mask].sum() / llm_n) if llm_n else None
    return row


def per_kind_rows(cfg: SimConfig, res: RunResult) -> list[dict[str, Any]]:
    """One row per request kind plus an ``all`` row."""
    wl = res.workload
    measured = wl.t >= cfg.warmup_s
    rows = [_request_stats(cfg, res, measured, "all")]
    for i, name in enumerate(wl.kinds):
        rows.append(_request_stats(cfg, res, measured & (wl.kind == i), name))
    return rows


def summary(cfg: SimConfig, res: RunResult) -> dict[str, Any]:
    """The strategy's row of ``comparison.csv``: request metrics, fleet use, cost."""
    allrow = per_kind_rows(cfg, res)[0]
    f = res.fleet
    prov = res.provisioned_s
    util = np.divide(res.busy_s, prov, out=np.zeros_like(prov), where=prov > 0)
    powered = prov > 0
    gpu_hours = float(prov.sum()) / 3600.0
    cost = float((prov * f.price_per_hour).sum()) / 3600.0
    wl = res.workload
    llm = wl.kinds.index("llm") if "llm" in wl.kinds else -1
    done_llm = (res.status == Status.COMPLETED) & (wl.kind == llm)
    tokens_all = float((wl.prompt[done_llm] + wl.output[done_llm]).sum())
    kv_cap = f.kv_capacity_gb * prov
    ts = res.timeseries
    row: dict[str, Any] = {"strategy": res.strategy, "arm": "all"}
    row.update({k: v for k, v in allrow.items() if k != "kind"})
    row.update(
        {
            "gpu_util_mean": _r(float(util[powered].mean())) if powered.any() else None,
            "gpu_util_std": _r(float(util[powered].std())) if powered.any() else None,
            "slot_occupancy_mean": _r(float(np.mean(ts["slot_occupancy"]))) if ts["t"] else None,
            "vram_kv_used_frac": _r(float(res.kv_gb_s.sum() / max(kv_cap.sum(), 1e-9))),
            "gpu_hours": _r(gpu_hours),
            "cost_usd": _r(cost),
            "tokens_served": _r(tokens_all),
            "cost_per_1k_tokens_usd": _r(cost / (tokens_all / 1000.0)) if tokens_all else None,
            "hedges_sent": int(res.counters["hedges_sent"]),
            "hedge_wins": int(res.counters["hedge_wins"]),
            "wasted_gpu_s": _r(res.counters["wasted_work_s"]),
            "retries": int(res.counters["retries"]),
            "refusals": int(res.counters["refusals"]),
            "strategy_errors": res.host.errors + res.host.invalid,
            "fallbacks": res.host.fallbacks,
            "events": res.events,
            "simulated_s": _r(res.t_end),
        }
    )
    return row


def arm_rows(cfg: SimConfig, res: RunResult) -> list[dict[str, Any]]:
    """A/B runs: one comparison row per arm (request metrics of the arm's requests).

    Fleet columns (utilization, cost, events) belong to the shared fleet and stay empty;
    ``hedges_sent`` counts the arm's hedged requests, ``retries`` its re-routes.
    """
    if res.arm is None:
        return []
    measured = res.workload.t >= cfg.warmup_s
    keys = list(summary(cfg, res))
    rows = []
    for k, name in enumerate(res.arm_names):
        mask = res.arm == k
        stats = _request_stats(cfg, res, measured & mask, "all")
        row: dict[str, Any] = dict.fromkeys(keys)
        row.update({k2: v for k2, v in stats.items() if k2 in row})
        host = res.arm_hosts[k]
        row.update(
            {
                "strategy": res.strategy,
                "arm": name,
                "hedges_sent": int(res.hedged[mask].sum()),
                "hedge_wins": int(res.hedge_won[mask].sum()),
                "retries": int(res.attempts[mask].sum()),
                "strategy_errors": host.errors + host.invalid,
                "fallbacks": host.fallbacks,
                "simulated_s": _r(res.t_end),
            }
        )
        rows.append(row)
    return rows


def arm_kind_rows(cfg: SimConfig, res: RunResult) -> dict[str, list[dict[str, Any]]]:
    """A/B runs: per arm, one row per request kind plus ``all`` (as :func:`per_kind_rows`)."""
    if res.arm is None:
        return {}
    wl = res.workload
    measured = wl.t >= cfg.warmup_s
    out = {}
    for k, name in enumerate(res.arm_names):
        mask = measured & (res.arm == k)
        rows = [_request_stats(cfg, res, mask, "all")]
        rows += [_request_stats(cfg, res, mask & (wl.kind == i), n) for i, n in enumerate(wl.kinds)]
        out[name] = rows
    return out


def timeseries_rows(res: RunResult) -> list[dict[str, Any]]:
    """Samples taken every ``metrics_tick_s`` (utilization over time)."""
    ts = res.timeseries
    keys = list(ts)
    return [{k: _r(ts[k][i]) for k in keys} for i in range(len(ts["t"]))]


def cdf_rows(cfg: SimConfig, res: RunResult) -> list[dict[str, Any]]:
    """Latency quantiles at 0, 0.5, ..., 100 percent per kind (for CDF plots)."""
    wl = res.workload
    measured = (wl.t >= cfg.warmup_s) & (res.status == Status.COMPLETED)
    rows = []
    for i, name in enumerate(("all", *wl.kinds)):
        sel = measured if name == "all" else measured & (wl.kind == i - 1)
        lat = res.latency[sel]
        if lat.size == 0:
            continue
        qs = np.percentile(lat, CDF_POINTS)
        for p, q in zip(CDF_POINTS, qs, strict=True):
            rows.append({"kind": name, "percentile": _r(p), "latency_s": _r(q)})
    return rows
