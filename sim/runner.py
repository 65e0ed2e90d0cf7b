"""Run several strategies on one scenario, in parallel processes, and write the results.

Layout of the output directory::

    config.yaml                 the validated config, every key spelled out
    comparison.csv / .json      one row per strategy (see docs/SIMULATOR.md)
    runtime.json                wall time and events/s per strategy (the only file that
                                differs between two runs with the same seed)
    <strategy>/metrics.csv/.json  per request kind (json adds counters)
    <strategy>/timeseries.csv   utilization samples over simulated time
    <strategy>/latency_cdf.csv  latency quantiles per kind
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from infermesh.serve.strategies.registry import DEFAULT_SET
from sim.config import SimConfig, dump, to_dict
from sim.engine import simulate
from sim.metrics import (
    arm_kind_rows,
    arm_rows,
    cdf_rows,
    per_kind_rows,
    summary,
    timeseries_rows,
)
from sim.workload import generate

__all__ = ["FORMATS", "ProgressSink", "run_one", "run_scenario", "write_csv"]

log = logging.getLogger(__name__)

FORMATS = ("csv", "json", "both")

ProgressSink = Callable[[str, float, int, int], None]
"""Receives (strategy, simulated time, events, requests routed)."""


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows with the first row's keys as header; None becomes an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        if not rows:
            return
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if v is None else v for k, v in row.items()})


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def run_one(
    cfg: SimConfig, strategy: str, out_dir: Path, fmt: str, sink: ProgressSink | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Simulate one strategy (or A/B split), write its files.

    Returns its comparison rows (the run's, then one per arm of an A/B split) and runtime
    information.
    """
    t0 = time.perf_counter()
    wl = generate(cfg)

    def progress(t: float, events: int, routed: int) -> None:
        if sink is not None:
            sink(strategy, t, events, routed)

    res = simulate(cfg, strategy, wl, progress=progress)
    wall = time.perf_counter() - t0
    row = summary(cfg, res)
    rows = [row, *arm_rows(cfg, res)]
    kinds = per_kind_rows(cfg, res)
    d = out_dir / strategy
    d.mkdir(parents=True, exist_ok=True)
    if fmt in ("csv", "both"):
        write_csv(d / "metrics.csv", kinds)
    if fmt in ("json", "both"):
        _write_json(
            d / "metrics.json",
            {
                "strategy": strategy,
                "summary": row,
                "per_kind": kinds,
                **({"arms": arm_kind_rows(cfg, res)} if res.arm is not None else {}),
                "counters": {k: v for k, v in res.counters.items()},
                "host": {
                    "decisions": res.host.decisions,
                    "errors": res.host.errors,
                    "invalid": res.host.invalid,
                    "fallbacks": res.host.fallbacks,
                },
            },
        )
    write_csv(d / "timeseries.csv", timeseries_rows(res))
    write_csv(d / "latency_cdf.csv", cdf_rows(cfg, res))
    runtime = {
        "wall_s": round(wall, 3),
        "events": res.events,
        "events_per_s": round(res.events / wall),
        "requests": wl.n,
        "requests_per_s": round(wl.n / wall),
        "strategy_time_s": round(res.host.strategy_time_s, 3),
        "budget_overruns": res.host.overruns,
    }
    return rows, runtime


def _worker(
    cfg_data: dict[str, Any], strategy: str, out_dir: str, fmt: str, q: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from sim.config import parse

    cfg = parse(cfg_data)
    last = [0.0]

    def sink(name: str, t: float, events: int, routed: int) -> None:
        now = time.monotonic()
        if q is not None and now - last[0] > 0.25:
            last[0] = now
            q.put((name, t, events, routed))

    return run_one(cfg, strategy, Path(out_dir), fmt, sink)


def run_scenario(
    cfg: SimConfig,
    out_dir: str | Path,
    strategies: Sequence[str] | None = None,
    fmt: str = "both",
    jobs: int | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every strategy and write all result files.

    With more than one job, strategies run in ``spawn``-ed worker processes: a script that
    calls this needs the usual ``if __name__ == "__main__":`` guard. With one job they run
    one after the other in this process.
    """
    names = list(strategies or cfg.strategies or DEFAULT_SET)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump(cfg))
    workers = max(1, min(jobs or os.cpu_count() or 1, len(names)))
    with _Bars(cfg, names, show_progress) as bars:
        if workers == 1:
            results = {s: run_one(cfg, s, out, fmt, bars.update) for s in names}
        else:
            results = _run_in_pool(cfg, names, out, fmt, workers, bars)
    for s, (_, runtime) in results.items():
        log.info("%s: %s events/s", s, runtime["events_per_s"])
    ordered = [row for s in names for row in results[s][0]]
    if fmt in ("csv", "both"):
        write_csv(out / "comparison.csv", ordered)
    if fmt in ("json", "both"):
        _write_json(out / "comparison.json", ordered)
    runtimes = {s: results[s][1] for s in names}
    _write_json(out / "runtime.json", {"jobs": workers, "strategies": runtimes})
    return ordered


def _run_in_pool(
    cfg: SimConfig, names: list[str], out: Path, fmt: str, workers: int, bars: _Bars
) -> dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]:
    ctx = mp.get_context("spawn")
    manager = ctx.Manager() if bars.enabled else None
    q = manager.Queue() if manager is not None else None
    cfg_data = to_dict(cfg)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futs = {
                s: pool.submit(_worker, cfg_data, s, str(out), fmt, q)
                for s in sorted(names, key=_cost_rank)
            }
            while q is not None and not all(f.done() for f in futs.values()):
                try:
                    bars.update(*q.get(timeout=0.2))
                except queue.Empty:
                    continue
            return {s: fut.result() for s, fut in futs.items()}
    finally:
        if manager is not None:
            manager.shutdown()


def _cost_rank(name: str) -> int:
    """Submission order: the most expensive strategies first, so workers finish together.

    The built-in list runs from the cheapest strategy to the most expensive one; other
    names (third-party strategies, A/B splits of two strategies) count as expensive.
    """
    return -DEFAULT_SET.index(name) if name in DEFAULT_SET else -len(DEFAULT_SET)


class _Bars:
    """One rich progress bar per strategy: simulated seconds and events/s (or nothing)."""

    def __init__(self, cfg: SimConfig, names: list[str], enabled: bool) -> None:
        self.enabled = enabled
        self.total = cfg.duration_s + cfg.drain_s
        self.names = names
        self.started: dict[str, tuple[float, int]] = {}
        self.last = 0.0
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description:<18}"),
                BarColumn(),
                TextColumn("{task.fields[sim]:>8} sim s"),
                TextColumn("{task.fields[eps]:>9} ev/s"),
                TimeElapsedColumn(),
            )
            self.progress.__enter__()
            self.tasks = {
                s: self.progress.add_task(s, total=self.total, sim="0", eps="-") for s in self.names
            }
        return self

    def update(self, name: str, t: float, events: int, routed: int = 0) -> None:
        """Show that ``name`` reached simulated time ``t`` after ``events`` events."""
        if self.progress is None:
            return
        now = time.monotonic()
        t0, e0 = self.started.setdefault(name, (now, events))
        eps = (events - e0) / (now - t0) if now > t0 else 0.0
        self.progress.update(self.tasks[name], completed=t, sim=f"{t:.0f}", eps=f"{eps:,.0f}")

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            for task in self.tasks.values():
                self.progress.update(task, completed=self.total)
            self.progress.__exit__(None, None, None)
