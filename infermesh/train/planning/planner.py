"""``plan_collectives``: pick the plan with the least predicted time, without flapping.

The planner enumerates every allowed (algorithm, compression, fusion window), predicts each
one's exposed collective time per step with :mod:`~infermesh.train.planning.cost_model`,
corrects the predictions with measurements when there are some, and returns the fastest --
unless a previous plan is given and the fastest is not faster by at least
``PlannerConfig.min_gain`` (hysteresis: small or noisy differences never switch plans).

:class:`Replanner` is the stateful wrapper a worker (or the coordinator) keeps: it collects
each step's collective time per plan and per group (and measured link bandwidths), fits the
link figures from them (:class:`~infermesh.train.planning.calibration.LinkCalibration`) and
re-plans every ``PlannerConfig.replan_every`` steps with the fitted links.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, replace

from infermesh.core.errors import UsageError
from infermesh.train.planning.api import (
    Algorithm,
    Alternative,
    CollectivePlan,
    Compression,
    JobShape,
    Measurement,
    PlanChoice,
    format_bytes,
)
from infermesh.train.planning.calibration import LinkCalibration
from infermesh.train.planning.cost_model import applicable, step_time
from infermesh.train.planning.links import LinkModel

logger = logging.getLogger(__name__)

__all__ = [
    "PlannerConfig",
    "Replanner",
    "candidates",
    "describe",
    "plan_collectives",
    "probe_plan",
]


@dataclass(frozen=True)
class PlannerConfig:
    """What the planner may choose and how eagerly it changes its mind."""

    algorithms: tuple[Algorithm, ...] = tuple(Algorithm)
    """Algorithms to consider (two-level ones only where the job has the shape for them)."""

    compressions: tuple[Compression, ...] = (Compression.NONE,)
    """Compressions to consider. Only ``none`` by default: compression changes the numerics,
    so a job opts in (e.g. ``(none, bf16)``)."""

    fusion_multiples: tuple[int, ...] = (1, 4, 16)
    """Fusion windows to consider, in DDP buckets; the whole gradient is always considered."""

    min_gain: float = 0.1
    """Switch only when the best plan is predicted at least this fraction faster (0.1: 10%)."""

    replan_every: int = 50
    """Re-plan every this many steps (K); ranks agree on the new plan at that step."""

    powersgd_rank: int = 4
    """PowerSGD's matrix approximation rank."""

    explore_within: float = 0.0
    """:class:`Replanner` only: at a re-plan, an alternative never measured whose predicted
    time is within this fraction of the current plan's measured time is run for one window
    before the planner settles (0: never). The model fitted on one plan's timings can be off
    by 20-25% for another; measuring settles what the model cannot."""

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise UsageError("algorithms is empty; name at least one, e.g. ring")
        if not self.compressions:
            raise UsageError("compressions is empty; name at least one, e.g. none")
        if not 0 <= self.min_gain < 1:
            raise UsageError(f"min_gain must be in [0, 1), got {self.min_gain}")
        if self.replan_every < 1:
            raise UsageError(f"replan_every must be >= 1, got {self.replan_every}")
        if self.powersgd_rank < 1:
            raise UsageError(f"powersgd_rank must be >= 1, got {self.powersgd_rank}")
        if not self.fusion_multiples or min(self.fusion_multiples) < 1:
            raise UsageError(f"fusion_multiples must be >= 1, got {self.fusion_multiples}")
        if not 0 <= self.explore_within < 1:
            raise UsageError(f"explore_within must be in [0, 1), got {self.explore_within}")


def candidates(job: JobShape, config: PlannerConfig) -> list[PlanChoice]:
    """Every plan the planner may choose for ``job``, in a stable order.

    PowerSGD runs torch's per-bucket hook over the backend's flat all-reduce, so it has one
    candidate: ring, one bucket per collective.
    """
    windows = sorted(
        {min(job.bucket_bytes * m, job.grad_bytes) for m in config.fusion_multiples}
        | {job.grad_bytes}
    )
    windows = [max(w, 1) for w in windows]
    out: list[PlanChoice] = []
    for compression in config.compressions:
        if compression is Compression.POWERSGD:
            out.append(PlanChoice(Algorithm.RING, compression, min(job.bucket_bytes, windows[-1])))
            continue
        for algorithm in config.algorithms:
            if not applicable(algorithm, job.nodes, job.gpus_per_node):
                continue
            out.extend(PlanChoice(algorithm, compression, w) for w in windows)
    if not out:
        names = ", ".join(a.value for a in config.algorithms)
        raise UsageError(
            f"no applicable algorithm among {names} for {job.nodes} node(s) x "
            f"{job.gpus_per_node} rank(s); add ring, tree or halving_doubling"
        )
    return out


def _factors(measurements: list[Measurement]) -> dict[tuple[Algorithm, Compression], float]:
    """Median measured/predicted ratio per measured (algorithm, compression)."""
    by_key: dict[tuple[Algorithm, Compression], list[float]] = defaultdict(list)
    for m in measurements:
        if m.predicted_s > 0 and m.measured_s > 0:
            by_key[(m.choice.algorithm, m.choice.compression)].append(m.measured_s / m.predicted_s)
    return {k: statistics.median(v) for k, v in by_key.items()}


def plan_collectives(
    job: JobShape,
    links: LinkModel,
    stats: list[Measurement] | None = None,
    *,
    previous: CollectivePlan | None = None,
    config: PlannerConfig | None = None,
    unmeasured_factor: float | None = None,
) -> CollectivePlan:
    """Return the collective plan for ``job`` on ``links``.

    ``stats`` are measured collective times; each (algorithm, compression) that was measured
    has its predictions scaled by its median measured/predicted ratio, the others by
    ``unmeasured_factor``. Its default, for links taken from a profile, is the smallest
    measured ratio: the links are at least that much slower than their profile (defaults are
    often off by a constant factor), so a wrong profile does not make every unmeasured plan
    look better. Links fitted from measurements need no such guess: pass 1.0. With
    ``previous``, the plan only changes when the best alternative is predicted at least
    ``config.min_gain`` faster than keeping ``previous``.
    """
    config = config or PlannerConfig()
    factors = _factors(stats or [])
    unmeasured = (
        min(factors.values(), default=1.0) if unmeasured_factor is None else unmeasured_factor
    )
    alternatives = []
    for choice in candidates(job, config):
        model = step_time(choice, job, links, config.powersgd_rank)
        factor = factors.get((choice.algorithm, choice.compression), unmeasured)
        alternatives.append(Alternative(choice, model * factor, factor))
    best = min(alternatives, key=lambda a: a.predicted_s)
    alts = tuple(alternatives)

    def make(alt: Alternative, version: int, reason: str) -> CollectivePlan:
        return CollectivePlan(
            alt.choice,
            nodes=job.nodes,
            gpus_per_node=job.gpus_per_node,
            predicted_s=alt.predicted_s,
            version=version,
            reason=reason,
            alternatives=alts,
            powersgd_rank=config.powersgd_rank,
        )

    if previous is None:
        return make(best, 1, "least predicted time")
    kept = next((a for a in alternatives if a.choice == previous.choice), None)
    if kept is None:
        reason = f"previous plan {previous.choice.label()} is no longer allowed"
    elif best.choice == kept.choice:
        return make(kept, previous.version, "still the fastest")
    else:
        gain = 1 - best.predicted_s / kept.predicted_s if kept.predicted_s > 0 else 0.0
        if gain < config.min_gain:
            return make(
                kept,
                previous.version,
                f"kept: {best.choice.label()} predicted only {gain:.0%} faster "
                f"(threshold {config.min_gain:.0%})",
            )
        reason = f"{gain:.0%} faster than {previous.choice.label()}"
    return make(best, previous.version + 1, reason)


class Replanner:
    """Keeps the current plan, the recent measurements and the fitted links; re-plans every K.

    Pure: no torch, no processes; the DDP hook feeds it on rank 0 and so could the
    coordinator or the simulator. Three inputs, all optional:

    - :meth:`observe`: one step's collective time under a plan (corrects that plan's
      prediction by its measured/predicted ratio);
    - :meth:`observe_group`: one step's collectives of one group (``world``, ``intra``,
      ``inter``, ``leaders``) under a plan: bytes, seconds, calls -- what the hook times;
    - :meth:`observe_bandwidth`: a measured link bandwidth, e.g. the cell's
      ``comm.link_bandwidth_bytes_per_s{link=...}``.

    The last two feed one :class:`LinkCalibration`; at each re-plan the links are fitted from
    it, so every plan -- including plans never run -- is predicted with measured link figures.
    """

    def __init__(
        self,
        job: JobShape,
        links: LinkModel,
        config: PlannerConfig | None = None,
        history: int = 200,
    ) -> None:
        self.job = job
        self.prior = self.links = links
        self.config = config or PlannerConfig()
        self.history = history
        self.calibration = LinkCalibration(links, job, history=history)
        self._measured: dict[tuple[Algorithm, Compression], deque[tuple[PlanChoice, float]]] = {}
        self.plan = plan_collectives(job, links, config=self.config)
        self._probing = False  # the current plan runs for one window to be measured

    def observe(self, choice: PlanChoice, measured_s: float) -> None:
        """Record one step's measured collective time under ``choice``."""
        if not math.isfinite(measured_s) or measured_s <= 0:
            return
        key = (choice.algorithm, choice.compression)
        self._measured.setdefault(key, deque(maxlen=self.history))
        self._measured[key].append((choice, measured_s))

    def observe_group(
        self, choice: PlanChoice, group: str, nbytes: float, seconds: float, calls: int = 1
    ) -> None:
        """Record one step's ``calls`` collectives of ``group`` under ``choice``.

        PowerSGD's timings include its matrix products and its wire bytes are not the
        recorded ones, so they are counted in ``calibration.ignored`` and not fitted.
        """
        if choice.compression is Compression.POWERSGD:
            self.calibration.ignored["powersgd timings (they include its compute)"] += 1
            return
        self.calibration.add_timing(choice.algorithm, group, nbytes, seconds, calls)

    def observe_bandwidth(self, link: str, bytes_per_s: float) -> None:
        """Record a measured bandwidth of ``link`` (``intra``, ``inter`` per NIC, ``world``)."""
        self.calibration.add_bandwidth(link, bytes_per_s)

    def _probe(self, plan: CollectivePlan) -> CollectivePlan | None:
        """:func:`probe_plan` with this replanner's measurements (once the links are fitted)."""
        if not self.calibrated:
            return None
        measured = {(c.algorithm, c.compression): s for c, s in self.measured_plans()}
        return probe_plan(plan, self.plan, measured, self.config.explore_within)

    def measured_plans(self) -> list[tuple[PlanChoice, float]]:
        """Each (algorithm, compression) run: its last choice (with its fusion window) and
        its median measured collective seconds per step."""
        return [
            (recent[-1][0], statistics.median(m for _, m in recent))
            for recent in self._measured.values()
            if recent
        ]

    @property
    def measurements(self) -> list[Measurement]:
        """The last ``history`` measurements of each (algorithm, compression) ever measured,
        with the current links' predictions.

        Kept per key so that a plan measured long ago is not forgotten and explored again.
        """
        return [
            Measurement(
                choice, measured, step_time(choice, self.job, self.links, self.config.powersgd_rank)
            )
            for recent in self._measured.values()
            for choice, measured in recent
        ]

    @property
    def calibrated(self) -> bool:
        """True once the links are fitted from measurements (not the profile's defaults)."""
        return self.links is not self.prior

    def calibrate(self) -> LinkModel:
        """Fit the links from what was observed so far; return them."""
        if self.calibration.samples:
            self.links = self.calibration.fit()
        return self.links

    def maybe_replan(self, step: int) -> CollectivePlan:
        """At every ``replan_every``-th step, re-plan from the measurements; return the plan."""
        if step > 0 and step % self.config.replan_every == 0:
            self.calibrate()
            new = plan_collectives(
                self.job,
                self.links,
                self.measurements,
                # after a probe window, the fastest measured plan wins outright
                previous=None if self._probing else self.plan,
                config=self.config,
                unmeasured_factor=1.0 if self.calibrated else None,
            )
            if self._probing:
                version = self.plan.version + (new.choice != self.plan.choice)
                new = replace(new, version=version, reason=f"after exploring: {new.reason}")
            probe = self._probe(new)
            self._probing = probe is not None
            new = probe or new
            if new.version != self.plan.version:
                logger.info(
                    "step %d: plan v%d %s -> v%d %s (%s)",
                    step,
                    self.plan.version,
                    self.plan.choice.label(),
                    new.version,
                    new.choice.label(),
                    new.reason,
                )
            self.plan = new
        return self.plan


def probe_plan(
    plan: CollectivePlan,
    current: CollectivePlan,
    measured: Mapping[tuple[Algorithm, Compression], float],
    within: float,
) -> CollectivePlan | None:
    """A never-measured alternative of ``plan`` to run for one window before settling, or
    None: the one predicted fastest among those within ``within`` of ``current``'s measured
    seconds per step (``measured``: by (algorithm, compression)). The model fitted on one
    plan's timings can be 20-25% off for another; measuring settles what it cannot.
    Shared by :class:`Replanner` and the coordinator."""
    key = (current.algorithm, current.compression)
    if within <= 0 or key not in measured:
        return None
    limit = measured[key] * (1 + within)
    untried = [
        alt
        for alt in plan.alternatives
        if (alt.choice.algorithm, alt.choice.compression) not in measured
        and alt.predicted_s <= limit
    ]
    if not untried:
        return None
    probe = min(untried, key=lambda a: a.predicted_s)
    return replace(
        plan,
        choice=probe.choice,
        predicted_s=probe.predicted_s,
        version=current.version + 1,
        reason=(
            f"exploring: never measured, predicted {probe.predicted_s * 1e3:.2f} ms/step, "
            f"within {within:.0%} of {current.choice.label()}'s measured "
            f"{measured[key] * 1e3:.2f}"
        ),
    )


def describe(plan: CollectivePlan) -> str:
    """A table of every alternative (fastest first) and the chosen plan, for people."""
    rows = sorted(plan.alternatives, key=lambda a: a.predicted_s)
    width = max([len(a.choice.label()) for a in rows] + [4])
    lines = [f"{'plan':<{width}}  {'predicted':>12}  {'meas/model':>10}"]
    for alt in rows:
        mark = "  <- chosen" if alt.choice == plan.choice else ""
        lines.append(
            f"{alt.choice.label():<{width}}  {alt.predicted_s * 1e3:>10.3f}ms  "
            f"{alt.measured_factor:>10.2f}{mark}"
        )
    lines.append(
        f"chosen: {plan.choice.algorithm.value}, compression {plan.choice.compression.value}, "
        f"fusion window {format_bytes(plan.choice.fusion_bytes)}, groups {plan.nodes} node(s) x "
        f"{plan.gpus_per_node} rank(s), predicted {plan.predicted_s * 1e3:.3f} ms/step "
        f"(v{plan.version}: {plan.reason})"
    )
    return "\n".join(lines)
