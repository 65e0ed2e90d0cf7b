"""A/B splits inside one run: a stable hash splits requests, metrics per arm."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from infermesh.serve.strategies.ab import AbSpec, arm_of, parse_ab
from infermesh.serve.strategies.api import StrategyError
from sim.config import ConfigError, parse, to_dict
from sim.engine import Status, simulate
from sim.metrics import arm_rows, summary
from sim.runner import run_scenario
from sim.testing import tiny_config


def test_an_ab_spec_parses_with_a_default_split() -> None:
    assert parse_ab("mesh") is None
    assert parse_ab("ab:mesh:round_robin") == AbSpec("mesh", "round_robin", 0.5)
    spec = parse_ab("ab:mesh:random:0.2")
    assert spec == AbSpec("mesh", "random", 0.2)
    assert spec.name == "ab:mesh:random:0.2"
    assert spec.arm_names() == ("a:mesh", "b:random")


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("ab:mesh", "is malformed"),
        ("ab::mesh:0.5", "is malformed"),
        ("ab:mesh:random:half", "split 'half' is not a number"),
        ("ab:mesh:random:1.5", "split 1.5 is out of range"),
    ],
)
def test_a_malformed_ab_spec_says_what_is_allowed(spec: str, problem: str) -> None:
    with pytest.raises(StrategyError, match=problem) as info:
        parse_ab(spec)
    assert "allowed: ab:A:B or ab:A:B:SPLIT" in str(info.value)


def test_the_split_is_stable_and_close_to_the_share() -> None:
    arms = [arm_of(k, 0.3, salt=42) for k in range(20000)]
    assert arms == [arm_of(k, 0.3, salt=42) for k in range(20000)]
    assert abs(arms.count(0) / len(arms) - 0.3) < 0.015
    assert arms != [arm_of(k, 0.3, salt=43) for k in range(20000)]


def test_config_validation_names_an_unknown_arm_strategy() -> None:
    data = to_dict(tiny_config())
    data["strategies"] = ["mesh", "ab:mesh:hybird", "ab:mesh"]
    with pytest.raises(ConfigError) as info:
        parse(data)
    problems = info.value.problems
    assert problems[0].startswith(
        "strategies[1]: value 'ab:mesh:hybird' names unknown strategy 'hybird'; allowed: "
    )
    assert problems[1].startswith("strategies[2]: A/B spec 'ab:mesh' is malformed")


def test_each_arm_routes_its_own_share_and_reports_its_own_metrics() -> None:
    cfg = tiny_config(duration_s=60.0, fleet={"cells": 2, "nodes_per_cell": 8, "mix": {"L40": 1}})
    res = simulate(cfg, "ab:mesh:random:0.5")
    assert res.arm is not None and res.arm_names == ("a:mesh", "b:random")
    share_a = float((res.arm == 0).mean())
    assert 0.4 < share_a < 0.6
    assert res.arm_hosts[0].decisions + res.arm_hosts[1].decisions == res.host.decisions
    rows = arm_rows(cfg, res)
    whole = summary(cfg, res)
    assert [r["arm"] for r in rows] == ["a:mesh", "b:random"]
    assert list(rows[0]) == list(whole)
    assert rows[0]["arrived"] + rows[1]["arrived"] == whole["arrived"]
    assert rows[0]["completed"] + rows[1]["completed"] == whole["completed"]
    assert rows[0]["gpu_util_mean"] is None  # the fleet is shared: no per-arm fleet columns
    # the load-aware arm beats the random arm on the same fleet at the same time
    assert rows[0]["latency_p99_s"] < rows[1]["latency_p99_s"]
    done = res.status == Status.COMPLETED
    assert done.sum() == whole["completed"] + int((res.workload.t < cfg.warmup_s)[done].sum())


def test_a_tenant_keyed_split_keeps_each_tenant_on_one_arm() -> None:
    cfg = tiny_config(router={"ab_key": "tenant"})
    res = simulate(cfg, "ab:mesh:power_of_two:0.5")
    assert res.arm is not None
    for tenant in np.unique(res.workload.tenant).tolist():
        assert np.unique(res.arm[res.workload.tenant == tenant]).size == 1


def test_an_ab_run_writes_a_row_per_arm_and_is_reproducible(tmp_path: Path) -> None:
    cfg = tiny_config()
    names = ["mesh", "ab:mesh:round_robin:0.5"]
    run_scenario(cfg, tmp_path / "a", names, "both", jobs=1, show_progress=False)
    run_scenario(cfg, tmp_path / "b", names, "both", jobs=1, show_progress=False)
    with (tmp_path / "a" / "comparison.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["strategy"], r["arm"]) for r in rows] == [
        ("mesh", "all"),
        ("ab:mesh:round_robin:0.5", "all"),
        ("ab:mesh:round_robin:0.5", "a:mesh"),
        ("ab:mesh:round_robin:0.5", "b:round_robin"),
    ]
    for name in ("comparison.csv", "ab:mesh:round_robin:0.5/metrics.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
