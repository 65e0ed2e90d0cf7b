"""Link figures fitted from measured collectives, and the planner that re-plans with them."""

from __future__ import annotations

import math
import re

import pytest

from infermesh.core.errors import UsageError
from infermesh.train.planning import (
    Algorithm,
    Backend,
    Compression,
    JobShape,
    LinkCalibration,
    LinkModel,
    PlanChoice,
    PlannerConfig,
    Replanner,
    allreduce_time,
    collectives,
    link_profile,
    step_time,
)
from infermesh.train.planning.cost_model import collective_time

MIB = 2**20
VETH = link_profile("veth-1g")  # the benchmark: loopback inside a "node", 1 Gbit/s between
GLOO_JOB = JobShape(2, 2, grad_bytes=3 * MIB, bucket_bytes=25 * MIB, backend=Backend.GLOO)
TWO_LEVEL = (Algorithm.RING, Algorithm.HIERARCHICAL, Algorithm.HIERARCHICAL_LEADER)


def group_timings(
    algorithm: Algorithm, n_bytes: float, truth: LinkModel, job: JobShape = GLOO_JOB
) -> dict[str, tuple[float, float, int]]:
    """What the hook records for one all-reduce on links ``truth``: group -> (bytes, s, calls)."""
    out: dict[str, tuple[float, float, int]] = {}
    for c in collectives(algorithm, n_bytes, job.nodes, job.gpus_per_node, job.backend):
        b, s, k = out.get(c.group, (0.0, 0.0, 0))
        out[c.group] = (b + c.recorded_bytes, s + collective_time(c, truth), k + 1)
    return out


def feed(calibration: LinkCalibration, algorithm: Algorithm, n: float, truth: LinkModel) -> None:
    for group, (nbytes, seconds, calls) in group_timings(algorithm, n, truth).items():
        calibration.add_timing(algorithm, group, nbytes, seconds, calls)


def test_on_gloo_the_hierarchical_reduce_scatter_is_priced_as_the_all_reduce_that_runs() -> None:
    gloo = collectives(Algorithm.HIERARCHICAL, 4 * MIB, 2, 4, Backend.GLOO)
    nccl = collectives(Algorithm.HIERARCHICAL, 4 * MIB, 2, 4, Backend.NCCL)
    assert [c.group for c in gloo] == ["intra", "inter", "intra"]
    assert gloo[0].terms[0].messages == 2 * nccl[0].terms[0].messages == 6
    assert gloo[0].terms[0].wire_bytes == pytest.approx(2 * nccl[0].terms[0].wire_bytes)
    assert allreduce_time(Algorithm.HIERARCHICAL, 4 * MIB, 2, 4, VETH, Backend.GLOO) > (
        allreduce_time(Algorithm.HIERARCHICAL, 4 * MIB, 2, 4, VETH, Backend.NCCL)
    )


def test_on_gloo_tree_and_halving_doubling_are_priced_as_the_ring_that_runs() -> None:
    ring = allreduce_time(Algorithm.RING, MIB, 2, 2, VETH, Backend.GLOO)
    for algorithm in (Algorithm.TREE, Algorithm.HALVING_DOUBLING):
        assert allreduce_time(algorithm, MIB, 2, 2, VETH, Backend.GLOO) == ring


def test_the_model_names_the_groups_the_hook_records() -> None:
    groups = {a: {c.group for c in collectives(a, MIB, 2, 2, Backend.GLOO)} for a in TWO_LEVEL}
    assert groups == {
        Algorithm.RING: {"world"},
        Algorithm.HIERARCHICAL: {"intra", "inter"},
        Algorithm.HIERARCHICAL_LEADER: {"intra", "leaders"},
    }


def test_calibration_from_timings_of_several_sizes_recovers_every_link_figure() -> None:
    truth = VETH.with_measured(intra=(200e-6, 300e6), inter=(150e-6, 110e6))
    calibration = LinkCalibration(VETH, GLOO_JOB)
    for n in (64 * 2**10, MIB, 4 * MIB):
        for algorithm in TWO_LEVEL:
            feed(calibration, algorithm, n, truth)
    fitted = calibration.fit()
    assert fitted.intra.latency_s == pytest.approx(200e-6, rel=0.01)
    assert fitted.intra.bandwidth_Bps == pytest.approx(300e6, rel=0.01)
    assert fitted.inter.latency_s == pytest.approx(150e-6, rel=0.01)
    assert fitted.inter.bandwidth_Bps == pytest.approx(110e6, rel=0.01)
    assert fitted.intra.source == fitted.inter.source == "measured"


def test_one_plan_at_one_size_predicts_the_plans_that_never_ran() -> None:
    truth = VETH.with_measured(intra=(200e-6, 300e6), inter=(150e-6, 110e6))
    calibration = LinkCalibration(VETH, GLOO_JOB)
    feed(calibration, Algorithm.HIERARCHICAL, GLOO_JOB.grad_bytes, truth)
    fitted = calibration.fit()
    for algorithm in TWO_LEVEL:
        choice = PlanChoice(algorithm, Compression.NONE, GLOO_JOB.grad_bytes)
        # the bandwidths follow the data; latencies they cannot separate stay the profile's
        assert step_time(choice, GLOO_JOB, fitted) == pytest.approx(
            step_time(choice, GLOO_JOB, truth), rel=0.05
        )


def test_a_measured_link_bandwidth_from_the_cell_replaces_the_profiles() -> None:
    calibration = LinkCalibration(VETH, GLOO_JOB)
    calibration.add_bandwidth("intra", 400e6)
    calibration.add_bandwidth("inter", 100e6)
    fitted = calibration.fit()
    assert fitted.intra.bandwidth_Bps == pytest.approx(400e6, rel=1e-3)
    assert fitted.inter.bandwidth_Bps == pytest.approx(100e6, rel=1e-3)
    assert fitted.intra.latency_s == VETH.intra.latency_s  # a bandwidth says nothing of it


def test_without_measurements_the_profile_is_returned_unchanged() -> None:
    assert LinkCalibration(VETH, GLOO_JOB).fit() is VETH


@pytest.mark.parametrize(
    ("seconds", "nbytes", "reason"),
    [
        (-1.0, MIB, "seconds=-1.0"),
        (math.nan, MIB, "seconds=nan"),
        (math.inf, MIB, "seconds=inf"),
        (0.01, 0, "bytes=0"),
    ],
)
def test_a_timing_that_is_not_a_positive_number_is_ignored_with_its_reason(
    seconds: float, nbytes: float, reason: str
) -> None:
    calibration = LinkCalibration(VETH, GLOO_JOB)
    calibration.add_timing(Algorithm.RING, "world", nbytes, seconds)
    calibration.add_bandwidth("inter", -5.0)
    assert calibration.samples == 0
    assert any(reason in r for r in calibration.ignored)
    assert any("inter bandwidth of -5.0" in r for r in calibration.ignored)
    assert calibration.fit() is VETH


@pytest.mark.parametrize(
    ("algorithm", "group", "message"),
    [
        (Algorithm.RING, "racks", "unknown collective group 'racks'; known: world, intra"),
        (Algorithm.RING, "leaders", "ring on 2 node(s) x 2 rank(s) runs no 'leaders' collective"),
        (Algorithm.HIERARCHICAL, "leaders", "its groups: inter, intra"),
    ],
)
def test_an_unknown_group_or_one_the_algorithm_does_not_run_is_a_usage_error(
    algorithm: Algorithm, group: str, message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        LinkCalibration(VETH, GLOO_JOB).add_timing(algorithm, group, MIB, 0.01)


def test_an_unknown_link_is_a_usage_error_listing_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown link 'nvswitch'; known: intra, inter, world"):
        LinkCalibration(VETH, GLOO_JOB).add_bandwidth("nvswitch", 1e9)


def run_replanner(
    replanner: Replanner, truth: LinkModel, steps: int
) -> list[tuple[int, PlanChoice]]:
    """Feed the replanner each step's timings on ``truth``; return the plan of every step."""
    job, history = replanner.job, []
    for step in range(1, steps + 1):
        choice = replanner.plan.choice
        timings = group_timings(choice.algorithm, choice.fusion_bytes, truth, job)
        replanner.observe(choice, sum(s for _, s, _ in timings.values()))
        for group, (nbytes, seconds, calls) in timings.items():
            replanner.observe_group(choice, group, nbytes, seconds, calls)
        history.append((step, replanner.maybe_replan(step).choice))
    return history


def test_timings_that_say_intra_is_slow_switch_hierarchical_to_the_then_fastest_plan() -> None:
    replanner = Replanner(GLOO_JOB, VETH, PlannerConfig(algorithms=TWO_LEVEL, replan_every=10))
    assert replanner.plan.algorithm is Algorithm.HIERARCHICAL  # the profile's loopback is fast
    slow_intra = VETH.with_measured(intra=(300e-6, 60e6))  # the ranks of a node: 60 MB/s
    history = run_replanner(replanner, slow_intra, 60)
    fastest = min(
        TWO_LEVEL,
        key=lambda a: step_time(
            PlanChoice(a, Compression.NONE, GLOO_JOB.grad_bytes), GLOO_JOB, slow_intra
        ),
    )
    assert fastest is Algorithm.RING
    assert [c.algorithm for s, c in history if s < 10] == [Algorithm.HIERARCHICAL] * 9
    assert {c.algorithm for s, c in history if s >= 10} == {fastest}  # at step 10, then stays
    assert replanner.plan.version == 2
    assert replanner.links.intra.bandwidth_Bps == pytest.approx(60e6, rel=0.05)


def test_the_chosen_plan_has_the_least_predicted_time_with_the_fitted_links() -> None:
    replanner = Replanner(GLOO_JOB, VETH, PlannerConfig(algorithms=TWO_LEVEL, replan_every=10))
    run_replanner(replanner, VETH.with_measured(intra=(100e-6, 150e6)), 30)
    plan = replanner.plan
    assert plan.predicted_s == min(a.predicted_s for a in plan.alternatives)
    for alt in plan.alternatives:  # every plan, run or not, uses the fitted links
        model = step_time(alt.choice, GLOO_JOB, replanner.links)
        assert alt.predicted_s == pytest.approx(model * alt.measured_factor)
        assert alt.measured_factor == pytest.approx(1.0, rel=1e-3)


def test_links_that_match_their_fit_do_not_flap_between_close_plans() -> None:
    # intra figures where hierarchical and ring are within the 10% threshold of each other
    truth = VETH.with_measured(intra=(30e-6, 400e6))
    replanner = Replanner(GLOO_JOB, VETH, PlannerConfig(algorithms=TWO_LEVEL, replan_every=5))
    history = run_replanner(replanner, truth, 200)
    assert len({c for _, c in history[-150:]}) == 1
    assert replanner.plan.version <= 2


def test_powersgd_timings_are_not_fitted_and_say_why() -> None:
    job = JobShape(2, 2, grad_bytes=3 * MIB, bucket_bytes=MIB)
    replanner = Replanner(job, VETH, PlannerConfig(compressions=(Compression.POWERSGD,)))
    replanner.observe_group(replanner.plan.choice, "world", MIB, 0.5)
    assert replanner.calibration.samples == 0
    assert "powersgd timings (they include its compute)" in replanner.calibration.ignored


def _run_with_model_error(
    replanner: Replanner, truth: LinkModel, steps: int, error: dict[Algorithm, float]
) -> list[Algorithm]:
    """Like :func:`run_replanner`, but an algorithm in ``error`` really takes that factor of
    what the model says: a plan the fitted model mis-prices."""
    job, history = replanner.job, []
    for step in range(1, steps + 1):
        choice = replanner.plan.choice
        scale = error.get(choice.algorithm, 1.0)
        timings = group_timings(choice.algorithm, choice.fusion_bytes, truth, job)
        replanner.observe(choice, scale * sum(s for _, s, _ in timings.values()))
        for group, (nbytes, seconds, calls) in timings.items():
            replanner.observe_group(choice, group, nbytes, scale * seconds, calls)
        history.append(replanner.maybe_replan(step).algorithm)
    return history


@pytest.mark.parametrize(
    ("leader_error", "settles_on"),
    [(0.8, Algorithm.HIERARCHICAL_LEADER), (1.1, Algorithm.HIERARCHICAL)],
)
def test_a_close_plan_never_measured_is_tried_for_one_window_and_the_faster_one_kept(
    leader_error: float, settles_on: Algorithm
) -> None:
    config = PlannerConfig(algorithms=TWO_LEVEL, replan_every=10, explore_within=0.2)
    replanner = Replanner(GLOO_JOB, VETH, config)
    history = _run_with_model_error(
        replanner, VETH, 50, {Algorithm.HIERARCHICAL_LEADER: leader_error}
    )
    assert history[:9] == [Algorithm.HIERARCHICAL] * 9  # the profile's choice
    assert history[9:19] == [Algorithm.HIERARCHICAL_LEADER] * 10  # step 10: the probe
    assert set(history[19:]) == {settles_on}  # step 20: the faster measured one, then stays
    assert replanner.plan.version == (2 if settles_on is Algorithm.HIERARCHICAL_LEADER else 3)
    # ring is predicted far slower than hierarchical measured: never tried
    assert Algorithm.RING not in history


def test_without_exploring_a_plan_the_model_overprices_is_never_tried() -> None:
    replanner = Replanner(GLOO_JOB, VETH, PlannerConfig(algorithms=TWO_LEVEL, replan_every=10))
    history = _run_with_model_error(replanner, VETH, 50, {Algorithm.HIERARCHICAL_LEADER: 0.8})
    assert set(history) == {Algorithm.HIERARCHICAL}
