"""The collective planner on published topologies, its cost model and its hysteresis."""

from __future__ import annotations

import json
import math
import re

import pytest

from infermesh.core.errors import UsageError
from infermesh.train.planning import (
    Algorithm,
    CollectivePlan,
    Compression,
    JobShape,
    PlanChoice,
    PlannerConfig,
    Replanner,
    allreduce_time,
    candidates,
    format_bytes,
    link_profile,
    parse_bytes,
    parse_choice,
    parse_plan_choice,
    plan_collectives,
    step_time,
)

H100 = link_profile("h100-nvlink-400g")  # 4 nodes x 8 H100, NVLink, 8 x 400 Gb/s NICs
KIB, MIB, GIB = 2**10, 2**20, 2**30
NCCL_ALGORITHMS = (Algorithm.RING, Algorithm.TREE, Algorithm.HIERARCHICAL)


def h100_job(n_bytes: int) -> JobShape:
    return JobShape(
        nodes=4, gpus_per_node=8, grad_bytes=n_bytes, bucket_bytes=min(n_bytes, 25 * MIB)
    )


@pytest.mark.parametrize("n_bytes", [4 * KIB, 64 * KIB, 1 * MIB])
def test_small_messages_on_four_h100_nodes_use_a_tree_or_two_level_algorithm(n_bytes: int) -> None:
    config = PlannerConfig(algorithms=NCCL_ALGORITHMS)
    plan = plan_collectives(h100_job(n_bytes), H100, config=config)
    assert plan.algorithm in (Algorithm.TREE, Algorithm.HIERARCHICAL)
    every = plan_collectives(h100_job(n_bytes), H100)
    assert every.algorithm is not Algorithm.RING


@pytest.mark.parametrize("n_bytes", [1 * GIB, 4 * GIB])
def test_large_messages_on_four_h100_nodes_use_ring(n_bytes: int) -> None:
    assert plan_collectives(h100_job(n_bytes), H100).algorithm is Algorithm.RING


@pytest.mark.parametrize("n_bytes", [4 * KIB, 1 * MIB, 100 * 10**6, 1 * GIB])
def test_the_chosen_plan_has_the_least_predicted_time_of_every_alternative(n_bytes: int) -> None:
    config = PlannerConfig(compressions=tuple(Compression))
    plan = plan_collectives(h100_job(n_bytes), H100, config=config)
    assert len(plan.alternatives) == len(candidates(h100_job(n_bytes), config))
    assert plan.predicted_s == min(a.predicted_s for a in plan.alternatives)
    assert plan.predicted_s == pytest.approx(
        step_time(plan.choice, h100_job(n_bytes), H100, config.powersgd_rank)
    )


def test_ring_on_one_node_costs_the_textbook_two_p_minus_one_steps() -> None:
    p, n = 8, 64 * MIB
    alpha, bw = H100.intra.latency_s, H100.intra.bandwidth_Bps
    expected = 2 * (p - 1) * (alpha + n / p / bw)
    assert allreduce_time(Algorithm.RING, n, 1, p, H100) == pytest.approx(expected)


def test_hierarchical_beats_flat_ring_when_the_link_between_nodes_is_the_bottleneck() -> None:
    veth = link_profile("veth-1g")  # the benchmark: 2 "nodes" x 2 ranks, 1 Gbit/s between them
    job = JobShape(nodes=2, gpus_per_node=2, grad_bytes=4 * MIB, bucket_bytes=MIB)
    ring = step_time(PlanChoice(Algorithm.RING, Compression.NONE, 4 * MIB), job, veth)
    plan = plan_collectives(job, veth)
    assert plan.algorithm is not Algorithm.RING
    assert ring / plan.predicted_s >= 1.3


def test_two_level_algorithms_are_not_offered_to_a_single_node_job() -> None:
    job = JobShape(nodes=1, gpus_per_node=8, grad_bytes=MIB)
    offered = {c.algorithm for c in candidates(job, PlannerConfig())}
    assert offered == {Algorithm.RING, Algorithm.TREE, Algorithm.HALVING_DOUBLING}


def test_compression_is_only_considered_when_the_job_allows_it() -> None:
    job = h100_job(GIB)
    assert {c.compression for c in candidates(job, PlannerConfig())} == {Compression.NONE}
    allowed = PlannerConfig(compressions=(Compression.NONE, Compression.BF16))
    assert plan_collectives(job, H100, config=allowed).compression is Compression.BF16


def test_powersgd_is_one_per_bucket_ring_candidate() -> None:
    config = PlannerConfig(compressions=(Compression.POWERSGD,))
    assert candidates(h100_job(GIB), config) == [
        PlanChoice(Algorithm.RING, Compression.POWERSGD, 25 * MIB)
    ]


def test_fusion_window_is_whole_without_overlap_and_smaller_under_a_long_backward() -> None:
    small = JobShape(4, 8, grad_bytes=2 * MIB, bucket_bytes=128 * KIB)
    assert plan_collectives(small, H100).fusion_bytes == 2 * MIB
    overlapped = JobShape(4, 8, grad_bytes=2 * GIB, bucket_bytes=25 * MIB, backward_s=1.0)
    assert plan_collectives(overlapped, H100).fusion_bytes < 2 * GIB


def _second_best(plan: CollectivePlan) -> CollectivePlan:
    ranked = sorted(plan.alternatives, key=lambda a: a.predicted_s)
    return CollectivePlan(
        ranked[1].choice, plan.nodes, plan.gpus_per_node, ranked[1].predicted_s, 7
    )


def test_a_plan_is_kept_when_the_best_alternative_is_not_faster_by_the_threshold() -> None:
    job = h100_job(GIB)
    previous = _second_best(plan_collectives(job, H100))
    kept = plan_collectives(job, H100, previous=previous, config=PlannerConfig(min_gain=0.5))
    assert (kept.choice, kept.version) == (previous.choice, 7)
    assert kept.reason.startswith("kept:")


def test_a_plan_changes_with_a_new_version_when_the_gain_exceeds_the_threshold() -> None:
    job = h100_job(GIB)
    best = plan_collectives(job, H100)
    changed = plan_collectives(
        job, H100, previous=_second_best(best), config=PlannerConfig(min_gain=0.0)
    )
    assert (changed.choice, changed.version) == (best.choice, 8)


def test_measured_times_switch_the_plan_once_and_then_it_stays() -> None:
    job = JobShape(nodes=2, gpus_per_node=2, grad_bytes=4 * MIB, bucket_bytes=4 * MIB)
    replanner = Replanner(job, link_profile("veth-1g"), PlannerConfig(replan_every=10))
    first = replanner.plan.choice
    ranked = sorted(replanner.plan.alternatives, key=lambda a: a.predicted_s)
    other = next(a.choice for a in ranked if a.choice.algorithm != first.algorithm)
    replanner.observe(other, 2.0 * step_time(other, job, replanner.links))  # measured earlier
    versions = []
    for step in range(1, 61):
        choice = replanner.plan.choice
        # the first choice is 5x slower than modelled, the other plan 2x
        factor = 5.0 if choice == first else 2.0
        replanner.observe(choice, factor * step_time(choice, job, replanner.links))
        versions.append(replanner.maybe_replan(step).version)
    assert replanner.plan.choice.algorithm == other.algorithm
    assert versions[:9] == [1] * 9  # nothing changes between re-planning steps
    assert versions[-1] == 2  # switched once, at step 10, then no flapping


def test_plans_serialise_to_json() -> None:
    plan = plan_collectives(h100_job(MIB), H100)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["choice"]["algorithm"] == plan.algorithm.value
    assert len(data["alternatives"]) == len(plan.alternatives)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("100MB", 100 * 10**6), ("25MiB", 25 * MIB), ("1.5GB", 1_500_000_000)],
)
def test_byte_sizes_are_parsed_with_decimal_and_binary_units(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "10XB", "-5MB", "0", "MB"])
def test_a_bad_byte_size_is_a_usage_error_quoting_it(text: str) -> None:
    with pytest.raises(UsageError, match=re.escape(repr(text))):
        parse_bytes(text)


def test_an_unknown_algorithm_name_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown algorithm 'rnig'; known: ring, tree"):
        parse_choice(Algorithm, "rnig", "algorithm")


def test_bytes_are_formatted_in_binary_units() -> None:
    assert (format_bytes(25 * MIB), format_bytes(512)) == ("25.0MiB", "512B")
    assert math.isclose(parse_bytes(format_bytes(GIB)), GIB)


def test_a_machine_uniformly_slower_than_its_profile_settles_on_one_plan() -> None:
    job = JobShape(nodes=2, gpus_per_node=2, grad_bytes=4 * MIB, bucket_bytes=MIB)
    replanner = Replanner(job, link_profile("cpu-loopback"), PlannerConfig(replan_every=5))
    versions = []
    for step in range(1, 401):
        choice = replanner.plan.choice
        replanner.observe(choice, 3.0 * step_time(choice, job, replanner.links))
        versions.append(replanner.maybe_replan(step).version)
    assert set(versions) == {1}  # the profile is off for every plan alike: nothing to gain


def test_a_fixed_plan_is_written_algorithm_slash_compression_slash_window() -> None:
    assert parse_plan_choice("hierarchical/bf16/4MB", 1) == PlanChoice(
        Algorithm.HIERARCHICAL, Compression.BF16, 4 * 10**6
    )
    assert parse_plan_choice("ring/none", 123).fusion_bytes == 123


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ring", "bad plan 'ring'; write algorithm/compression[/window]"),
        ("ringg/none", "unknown algorithm 'ringg'; known: ring"),
        ("ring/zip", "unknown compression 'zip'; known: none"),
    ],
)
def test_a_bad_fixed_plan_names_the_value_and_the_allowed_form(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_plan_choice(text, 1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("min_gain", 1.0, "min_gain must be in [0, 1), got 1.0"),
        ("replan_every", 0, "replan_every must be >= 1, got 0"),
        ("explore_within", -0.1, "explore_within must be in [0, 1), got -0.1"),
        ("explore_within", 1.5, "explore_within must be in [0, 1), got 1.5"),
    ],
)
def test_a_bad_planner_setting_names_the_field_and_the_allowed_range(
    field: str, value: float, message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        PlannerConfig(**{field: value})
