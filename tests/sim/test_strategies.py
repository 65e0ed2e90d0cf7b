"""The strategy interface, registry, host fallback and each built-in strategy."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from infermesh.serve import strategies as strategies_pkg
from infermesh.serve.strategies import DEFAULT_SET, create, known
from infermesh.serve.strategies.api import (
    Decision,
    Outcome,
    Strategy,
    StrategyError,
    UnknownStrategy,
)
from infermesh.serve.strategies.host import StrategyHost
from infermesh.serve.strategies.ml_mesh import MlEnhancedMesh
from infermesh.serve.strategies.registry import StrategyRegistry
from infermesh.serve.strategies.testing import make_request, make_view

LOAD_AWARE = [
    "least_loaded",
    "heuristic",
    "mesh",
    "mesh_hedge",
    "adaptive_mesh",
    "predictive_mesh",
    "hybrid_mesh",
    "ml_enhanced_mesh",
]


def test_unknown_strategy_error_lists_the_known_names() -> None:
    with pytest.raises(UnknownStrategy) as exc:
        create("hybird")
    msg = str(exc.value)
    assert msg.startswith("unknown strategy 'hybird'; known: adaptive_mesh, baseline_rr,")
    assert all(name in msg for name in DEFAULT_SET)


def test_every_default_strategy_is_registered_with_its_name() -> None:
    for name in DEFAULT_SET:
        s = create(name)
        assert isinstance(s, Strategy)
        assert name in known()


def test_unknown_option_names_the_allowed_options() -> None:
    with pytest.raises(StrategyError, match="unknown option 'trust'; allowed: top_k, trust_s"):
        create("mesh", {"trust": 1.0})


def test_entry_points_add_strategies(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeEntryPoint:
        name = "third_party"
        value = "infermesh.serve.strategies.simple:RandomChoice"

    monkeypatch.setattr(
        "infermesh.serve.strategies.registry.entry_points",
        lambda group: [FakeEntryPoint()] if group == "g" else [],
    )
    reg = StrategyRegistry({}, group="g")
    assert reg.known() == ["third_party"]
    assert reg.create("third_party").name == "random"


class _Broken(Strategy):
    name = "broken"

    def decide(self, request, view, now):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")


class _Slow(Strategy):
    name = "slow"

    def decide(self, request, view, now):  # type: ignore[no-untyped-def]
        return Decision(targets=(3,))


def _fake_timer(step: float):  # type: ignore[no-untyped-def]
    t = [0.0]

    def timer() -> float:
        t[0] += step
        return t[0]

    return timer


def test_host_falls_back_to_round_robin_on_error_and_counts_it() -> None:
    host = StrategyHost(_Broken())
    d = host.decide(make_request(), make_view(), 0.0)
    assert d.targets[0] == 0
    assert (host.counters.errors, host.counters.fallbacks) == (1, 1)


def test_host_counts_overruns_and_enforces_only_when_asked() -> None:
    view = make_view()
    lax = StrategyHost(_Slow(), budget_s=0.001, timer=_fake_timer(0.01))
    assert lax.decide(make_request(), view, 0.0).targets == (3,)
    assert (lax.counters.overruns, lax.counters.fallbacks) == (1, 0)
    strict = StrategyHost(_Slow(), budget_s=0.001, enforce_budget=True, timer=_fake_timer(0.01))
    assert strict.decide(make_request(), view, 0.0).targets == (0, 1)
    assert (strict.counters.overruns, strict.counters.fallbacks) == (1, 1)


def test_host_replaces_out_of_range_targets() -> None:
    class Bad(Strategy):
        name = "bad"

        def decide(self, request, view, now):  # type: ignore[no-untyped-def]
            return Decision(targets=(10_000,))

    host = StrategyHost(Bad())
    assert host.decide(make_request(), make_view(), 0.0).targets[0] == 0
    assert host.counters.invalid == 1


@pytest.mark.parametrize("name", DEFAULT_SET)
def test_strategy_returns_valid_targets_and_avoids_unavailable_nodes(name: str) -> None:
    view = make_view(cells=2, nodes_per_cell=8)
    view.available[:8] = False
    view.cells.available[0] = 0
    s = create(name, seed=1)
    for i in range(20):
        d = s.decide(make_request(request_id=i, prefix_group=i % 3), view, float(i))
        assert d.targets and all(8 <= t < 16 for t in d.targets[:1]), (name, d)


@pytest.mark.parametrize("name", LOAD_AWARE)
def test_load_aware_strategies_pick_the_idle_node(name: str) -> None:
    q = np.full(16, 12.0)
    q[13] = 0.0
    view = make_view(queue_depth=q)
    d = create(name, seed=1).decide(make_request(origin_cell=1), view, 0.0)
    assert d.targets[0] == 13


def test_power_of_two_prefers_the_less_loaded_of_its_samples() -> None:
    q = np.arange(16, dtype=float)
    view = make_view(queue_depth=q)
    s = create("power_of_two", seed=5)
    picks = [s.decide(make_request(), view, 0.0).targets[0] for _ in range(400)]
    assert np.mean(picks) < 6.5  # uniform would give 7.5


def test_round_robin_cycles_over_nodes() -> None:
    view = make_view(cells=1, nodes_per_cell=4)
    s = create("baseline_rr")
    assert [s.decide(make_request(), view, 0.0).targets[0] for _ in range(6)] == [0, 1, 2, 3, 0, 1]


def test_prefix_affinity_sends_a_group_to_one_home_and_spills_when_busy() -> None:
    view = make_view(cells=1, nodes_per_cell=16)
    s = create("prefix_affinity")
    homes = {s.decide(make_request(prefix_group=7), view, 0.0).targets[0] for _ in range(5)}
    assert len(homes) == 1
    home = homes.pop()
    view.queue_depth[home] = 100.0
    view.epoch += 1  # a host publishes new columns with a new epoch (FleetView's contract)
    assert s.decide(make_request(prefix_group=7), view, 0.0).targets[0] != home


def test_mesh_hedge_hedges_into_another_cell_when_not_busy() -> None:
    d = create("mesh_hedge").decide(make_request(origin_cell=0), make_view(), 0.0)
    assert d.hedge is not None
    assert d.hedge.target // 8 != d.targets[0] // 8
    assert d.hedge.delay_s > 0


def test_adaptive_mesh_rejects_when_the_wait_exceeds_the_slo() -> None:
    view = make_view(queue_depth=np.full(16, 400.0))
    d = create("adaptive_mesh").decide(make_request(), view, 0.0)
    assert not d.admit and d.retry_after_s > 0


def test_ml_enhanced_mesh_learns_from_outcomes() -> None:
    s = MlEnhancedMesh({"explore": 0.0})
    view = make_view()
    s.decide(make_request(request_id=0), view, 0.0)
    x = s.pending[0][1]
    before = float(x @ s.weights["llm"])
    for i in range(50):
        d = s.decide(make_request(request_id=i), view, 0.0)
        s.observe(Outcome(i, "llm", d.targets[0], 30.0, 26.6, 3.4, False, float(i)))
    after = float(x @ s.weights["llm"])
    assert abs(after - 30.0) < 0.5 * abs(before - 30.0)


def test_strategies_import_only_core_and_their_own_package() -> None:
    root = Path(strategies_pkg.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                mod = node.module
            elif isinstance(node, ast.Import):
                mod = node.names[0].name
            else:
                continue
            if mod.startswith(("infermesh", "sim")):
                assert mod.startswith(("infermesh.core", "infermesh.serve.strategies")), (path, mod)


@pytest.mark.parametrize(
    "name", ["mesh", "mesh_hedge", "predictive_mesh", "hybrid_mesh", "heuristic"]
)
def test_cell_scores_in_python_and_in_numpy_pick_the_same_targets(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infermesh.serve.strategies import heuristic, mesh, predictive

    rng = np.random.default_rng(5)
    view = make_view(cells=6, nodes_per_cell=8)
    view.rtt_s = rng.uniform(0.001, 0.05, (6, 6))
    view.queue_depth[:] = rng.integers(0, 40, view.n_nodes)
    view.cells.load[:] = rng.uniform(0.1, 1.5, 6)
    view.cells.sent[:] = rng.integers(0, 5, 6)
    view.cells.available[2] = 0  # a cell with no available node is never chosen
    view.available[16:24] = False

    def decisions(small_cells: int) -> list[tuple[int, ...]]:
        for module in (heuristic, mesh, predictive):
            monkeypatch.setattr(module, "SMALL_CELLS", small_cells)
        s = create(name, seed=1)
        return [
            s.decide(make_request(request_id=i, origin_cell=i % 6), view, 0.0).targets
            for i in range(12)
        ]

    in_python, in_numpy = decisions(1000), decisions(0)
    assert in_python == in_numpy
    assert all(not 16 <= t < 24 for ts in in_python for t in ts)
