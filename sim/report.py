"""``infermesh sim report``: a comparison table, PNG plots and one self-contained HTML page.

Reads what :mod:`sim.runner` wrote (``comparison.csv`` or ``comparison.json`` and each
strategy's ``timeseries.csv`` and ``latency_cdf.csv``) and writes into ``<results>/report/``:
``latency_cdf.png``, ``utilization.png``, ``cost_vs_p99.png`` and ``report.html`` (plots
embedded as base64, no external files).
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

from infermesh.core.errors import UsageError

__all__ = ["TABLE_COLUMNS", "build_report", "fmt_cell", "load_comparison"]

TABLE_COLUMNS = (
    ("strategy", "strategy"),
    ("arm", "arm"),
    ("latency_p50_s", "p50 s"),
    ("latency_p99_s", "p99 s"),
    ("ttft_p99_s", "TTFT p99 s"),
    ("slo_attainment", "SLO met"),
    ("goodput_rps", "goodput/s"),
    ("dropped", "dropped"),
    ("rejected", "rejected"),
    ("gpu_util_mean", "util"),
    ("cost_per_1k_tokens_usd", "$/1k tok"),
    ("hedge_wins", "hedge wins"),
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def load_comparison(results: Path) -> list[dict[str, Any]]:
    """Rows of the comparison file (CSV preferred, else JSON)."""
    if (results / "comparison.csv").exists():
        return [dict(r) for r in _read_csv(results / "comparison.csv")]
    if (results / "comparison.json").exists():
        return list(json.loads((results / "comparison.json").read_text()))
    raise UsageError(
        f"results: value {str(results)!r} has no comparison.csv or comparison.json; "
        "allowed: a directory written by 'infermesh sim run --output DIR'"
    )


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def fmt_cell(x: Any) -> str:
    if x in (None, ""):
        return "-"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f"{v:.4g}"


def _plots(results: Path, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["strategy"]) for r in rows]
    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for s in names:
        f = results / s / "latency_cdf.csv"
        if not f.exists():
            continue
        pts = [r for r in _read_csv(f) if r["kind"] == "all"]
        ax.plot(
            [_num(r["latency_s"]) for r in pts], [_num(r["percentile"]) / 100 for r in pts], label=s
        )
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (s, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Latency CDF (all request kinds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    p = out / "latency_cdf.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(8, 5))
    for s in names:
        f = results / s / "timeseries.csv"
        if not f.exists():
            continue
        pts = _read_csv(f)
        ax.plot([_num(r["t"]) for r in pts], [_num(r["slot_occupancy"]) for r in pts], label=s)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("batch-slot occupancy of powered nodes")
    ax.set_title("Utilization over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    p = out / "utilization.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        x, y = _num(r.get("latency_p99_s")), _num(r.get("cost_per_1k_tokens_usd"))
        ax.scatter([x], [y])
        ax.annotate(
            str(r["strategy"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xlabel("p99 latency (s)")
    ax.set_ylabel("cost per 1k tokens (USD)")
    ax.set_title("Cost vs p99 latency")
    ax.grid(True, alpha=0.3)
    p = out / "cost_vs_p99.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def _html(results: Path, rows: list[dict[str, Any]], images: list[Path]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in TABLE_COLUMNS)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(fmt_cell(r.get(k)))}</td>" for k, _ in TABLE_COLUMNS)
        + "</tr>"
        for r in rows
    )
    imgs = "".join(
        f'<h2>{html.escape(p.stem)}</h2><img alt="{html.escape(p.stem)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images
    )
    config = (results / "config.yaml").read_text() if (results / "config.yaml").exists() else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>InferMesh simulation report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}"
        "</style></head><body>"
        f"<h1>InferMesh simulation report: {html.escape(results.name)}</h1>"
        f"<table><tr>{head}</tr>{body}</table>{imgs}"
        f"<h2>config.yaml</h2><pre>{html.escape(config)}</pre></body></html>\n"
    )


def build_report(results: str | Path, plots: bool = True) -> tuple[list[dict[str, Any]], Path]:
    """Write plots and the HTML page; returns (comparison rows, report directory)."""
    res = Path(results)
    rows = load_comparison(res)
    out = res / "report"
    out.mkdir(parents=True, exist_ok=True)
    images = _plots(res, rows, out) if plots else []
    (out / "report.html").write_text(_html(res, rows, images))
    return rows, out
