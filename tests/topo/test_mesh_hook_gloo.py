"""MeshHook on a real 4-rank gloo group (2 "nodes" x 2 ranks on CPU) against DDP's default.

One spawn runs every scenario of ``_gloo_worker`` (about 12 s on 2 cores); the tests read
what each rank saw. Tolerances are on ``max |g_hook - g_ddp| / max |g_ddp|`` per parameter and
step:

- fp32 plans (ring, tree, two-level, any fusion window): 1e-5 -- only the order of the sums
  differs;
- fp16: 2e-3 (10-bit mantissa, error about 5e-4 per value, four ranks);
- bf16: 1.6e-2 (7-bit mantissa, about 4e-3 per value);
- PowerSGD, rank 8: 5e-3 -- the gradients of these matrices have rank <= 8 (4 ranks x batch
  2), so a rank-8 approximation is exact up to orthogonalisation round-off;
- a run that switches plans every two steps (ring, hierarchical, leader, ring+fp16): fp16's.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.topo import _gloo_worker

pytestmark = pytest.mark.slow

TOLERANCE = {
    "ring": 1e-5,
    "ring_fused_all": 1e-5,
    "tree_emulated": 1e-5,
    "hierarchical": 1e-5,
    "hierarchical_fused": 1e-5,
    "hierarchical_leader": 1e-5,
    "ring_fp16": 2e-3,
    "hierarchical_bf16": 1.6e-2,
    "powersgd": 5e-3,
    "switching": 2e-3,
    "planner": 1e-5,
    "env_plan": 1.6e-2,
    "cell_plan": 1e-5,
    "straggler": 1e-5,
}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _gloo_worker.run(tmp_path_factory.mktemp("gloo"), world=4)


def test_every_scenario_has_a_tolerance() -> None:
    assert set(TOLERANCE) == set(_gloo_worker.SCENARIOS)


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_every_plan_gives_the_gradients_of_ddps_default_allreduce(
    ranks: list[dict[str, Any]], name: str
) -> None:
    for rank, seen in enumerate(ranks):
        errors = seen[name]["errors"]
        assert len(errors) == _gloo_worker.SCENARIOS[name][2]
        assert max(errors) <= TOLERANCE[name], f"rank {rank}: {errors}"


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_the_training_loss_matches_ddps_default_allreduce(
    ranks: list[dict[str, Any]], name: str
) -> None:
    for step, (ref, mesh) in enumerate(ranks[0][name]["losses"]):
        assert mesh == pytest.approx(ref, rel=10 * TOLERANCE[name], abs=1e-6), f"step {step}"


def test_all_ranks_adopt_the_same_plans_at_the_same_steps(ranks: list[dict[str, Any]]) -> None:
    for name in TOLERANCE:
        assert all(r[name]["plans"] == ranks[0][name]["plans"] for r in ranks), name


def test_switching_every_two_steps_changes_the_plan_at_the_agreed_steps(
    ranks: list[dict[str, Any]],
) -> None:
    plans = ranks[0]["switching"]["plans"]
    assert [(step, version) for step, version, _ in plans] == [
        (0, 1),
        (2, 2),
        (4, 3),
        (6, 4),
        (8, 5),
    ]
    assert [label.split("/")[0] for _, _, label in plans][:4] == [
        "ring",
        "hierarchical",
        "hierarchical_leader",
        "ring",
    ]
    assert set(ranks[0]["switching"]["groups"]) == {"world", "intra", "inter", "leaders"}


def test_records_and_windows_carry_the_plan_that_ran_when_the_plan_switches(
    ranks: list[dict[str, Any]],
) -> None:
    for rank in ranks:
        run = rank["switching"]
        in_force = {}  # step -> label of the plan adopted at or before it
        for step in range(run["steps"]):
            adopted = [label for at, _, label in run["plans"] if at <= step]
            in_force[step] = adopted[-1].split("/")[:2]
        # the last bucket's collective finishes after the step counter moved on: still its step
        assert {step for step, _, _ in run["record_plans"]} == set(range(run["steps"]))
        for step, algorithm, compression in run["record_plans"]:
            assert [algorithm, compression] == in_force[step], (step, algorithm)
        # a window ending at step s ran under the plan of step s - 1, not the one adopted at s
        for end, label, _, _ in run["windows"]:
            assert label.split("/")[:2] == in_force[end - 1], (end, label)


def test_each_collective_is_recorded_with_its_group_and_gloo_emulation(
    ranks: list[dict[str, Any]],
) -> None:
    seen = ranks[1]
    assert seen["hierarchical"]["groups"] == ["inter", "intra"]
    assert seen["hierarchical"]["emulated"] == ["hierarchical"]  # reduce-scatter on gloo
    assert seen["hierarchical_leader"]["groups"] == ["intra"]  # rank 1 is no leader
    assert ranks[0]["hierarchical_leader"]["groups"] == ["intra", "leaders"]
    assert seen["tree_emulated"]["emulated"] == ["tree"]
    assert seen["ring"]["emulated"] == []


def test_a_fusion_window_groups_buckets_into_fewer_collectives(ranks: list[dict[str, Any]]) -> None:
    per_bucket, fused = ranks[0]["ring"]["records"], ranks[0]["ring_fused_all"]["records"]
    assert fused == _gloo_worker.STEPS  # one collective per step
    assert per_bucket > fused


def test_without_a_schedule_rank_zero_plans_and_every_rank_follows(
    ranks: list[dict[str, Any]],
) -> None:
    for seen in ranks:
        planned = seen["planner"]
        assert planned["steps"] == _gloo_worker.STEPS
        assert planned["plans"][0][:2] == [0, 1]


def test_a_rank_that_computes_longer_every_step_is_reported_as_a_straggler_on_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    for seen in ranks:
        reported = seen["straggler"]["stragglers"]
        assert [rank for rank, _ in reported] == [_gloo_worker.SLOW_RANK], reported
    assert all(r["ring"]["stragglers"] == [] for r in ranks)


def test_a_fixed_plan_in_the_environment_replaces_the_planner(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["env_plan"]["plans"] == [[0, 1, "hierarchical_leader/bf16/976.6KiB"]]


def test_rank_zero_adopts_the_coordinators_plans_and_plans_locally_when_one_cannot_run(
    ranks: list[dict[str, Any]],
) -> None:
    plans = ranks[0]["cell_plan"]["plans"]
    assert all(r["cell_plan"]["plans"] == plans for r in ranks)
    # v1 from the start; v2 written before step 3, adopted at the next agreement (step 4)
    assert plans[0] == [0, 1, "hierarchical/none/700.0KiB"]
    assert plans[1][:2] == [4, 2] and plans[1][2].startswith("ring/none/")
    assert not any(label.startswith("tree/") for _, _, label in plans)
    (warning,) = ranks[0]["cell_plan"]["warnings"]
    assert warning.startswith("step 6: the coordinator's collective plan v3 (tree/none/1) is not")
    assert "tree is not among this hook's algorithms; planning locally" in warning
    # rank 0 sends the links it fitted (the coordinator plans with them); the others fit none
    intra_s, intra_Bps, inter_s, node_Bps = ranks[0]["cell_plan"]["published_links"]
    assert 0 < intra_s < 1 and 0 < inter_s < 1 and intra_Bps > 1e6 and node_Bps > 1e6
    assert ranks[0]["ring"]["published_links"] is None  # no agent: nothing to send
    # and what each plan it ran measured: the coordinator corrects its model with them
    measured = {(a, c) for a, c, _, _ in ranks[0]["cell_plan"]["published_measured"]}
    assert {("hierarchical", "none"), ("ring", "none")} <= measured
