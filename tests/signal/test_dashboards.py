"""Every expression of docs/dashboards/*.json names only metrics the code exports.

To add a component's metrics (the router, the model server, the coordinator), add the
module that declares them to METRIC_MODULES; names that exist only outside this repository
go to EXTERNAL_METRICS with the reason.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from infermesh.obs.labels import LABELS
from infermesh.obs.metrics import REGISTRY

DASHBOARDS = Path(__file__).resolve().parents[2] / "docs" / "dashboards"

METRIC_MODULES = (
    "infermesh.signal.fusion",
    "infermesh.signal.export",
    "infermesh.train.hooks.mesh_hook",
    "infermesh.train.launcher.agent",
)
"""Modules that declare metrics on the process registry (imported by this test)."""

EXTERNAL_METRICS: dict[str, str] = {}
"""Metric name -> why it is known although no module here declares it."""

_FUNCTIONS = {
    "sum", "avg", "max", "min", "count", "rate", "irate", "increase", "delta",
    "histogram_quantile", "topk", "bottomk", "clamp_min", "clamp_max", "abs", "by",
    "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "label_values", "time", "vector", "scalar", "avg_over_time",
    "max_over_time", "min_over_time", "quantile",
}  # fmt: skip


def exported_names() -> set[str]:
    """Every sample name the registry can expose, after importing METRIC_MODULES."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names: set[str] = set(EXTERNAL_METRICS)
    for family in REGISTRY.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, grouping labels) of a PromQL expression (Grafana variables allowed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    groups: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        groups |= {g.strip() for g in m.group(1).split(",") if g.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    if text.strip().startswith("label_values("):
        inner = text.strip()[len("label_values(") : -1]
        metric, _, label = inner.partition(",")
        return {metric.strip()}, {label.strip()}
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {t for t in tokens if t not in _FUNCTIONS and not t.isdigit()}, groups


def _expressions(doc: Any) -> list[str]:
    out = []
    for panel in doc["panels"]:
        out += [t["expr"] for t in panel.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var.get("type") == "query":
            out.append(var["query"]["query"])
    return out


FILES = sorted(DASHBOARDS.glob("*.json"))


def test_there_are_cell_job_and_router_dashboards() -> None:
    assert {f.stem for f in FILES} == {"cell", "job", "router"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_dashboard_expression_uses_exported_metrics_and_shared_labels(path: Path) -> None:
    doc = json.loads(path.read_text())
    known = exported_names()
    exprs = _expressions(doc)
    assert exprs, f"{path.name} has no expressions"
    for expr in exprs:
        names, groups = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= known, f"{path.name}: {sorted(names - known)} not exported ({expr})"
        assert groups <= {*LABELS, "le"}, f"{path.name}: labels {groups - {*LABELS, 'le'}}"


def test_the_parser_finds_names_and_rejects_unknown_ones() -> None:
    names, groups = metric_names(
        'histogram_quantile(0.95, sum by (le, strategy) (rate(a_bucket{job=~"$job"}[5m])))'
    )
    assert names == {"a_bucket"} and groups == {"le", "strategy"}
    names, _ = metric_names("sum(rate(x_total[1m])) / sum(rate(y_sum[$__rate_interval]))")
    assert names == {"x_total", "y_sum"}
    assert "infermesh_no_such_metric" not in exported_names()
