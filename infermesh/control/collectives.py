"""The coordinator's collective plans: one per running training job, from the cell's figures.

Every ``interval_s`` the coordinator plans each RUNNING job whose workers report their shape
(the MeshHook sends its gradient bytes, DDP bucket size and backend with its collective
timings; the agents turn them into ``comm.grad_bytes`` / ``comm.bucket_bytes`` samples):

- the job's shape: the last round's nodes x ``nproc_per_node``, those bytes, that backend;
- its links: the profile the job names (``INFERMESH_LINK_PROFILE`` in its environment) or the
  backend's default, with the latency and bandwidth of each link class that rank 0's hook
  fitted from its own timings (``comm.link_latency_s`` / ``comm.link_fitted_bytes_per_s``:
  the same links the hook would plan with), or, before it has, the bandwidths its nodes
  measured fitted in (:func:`~infermesh.train.planning.measured_links`, as ``infermesh topo
  plan JOB`` does);
- :func:`~infermesh.train.planning.plan_collectives` over the algorithms the backend applies,
  without compression (it changes the numerics; a job opts in inside its own hook), with the
  collective time the hook measured under each plan it ran correcting that plan's prediction,
  keeping the current plan unless another is predicted ``min_gain`` faster;
- exploring, as the hook's own planner does: a plan never measured that the model cannot rule
  out is sent as a probe (``CollectivePlan.probe``) for one window, and once the hook measured
  it the fastest measured plan is kept (:func:`plan_job`).

A changed plan gets the next version, is stored on the job (``Job.plan``, shown by ``infermesh
jobs show``), recorded as an event, and sent to the agents of the job's nodes on their next
heartbeat reply. Each agent writes it where its workers' hook reads it at its next agreement
step (docs/TOPOLOGY.md, "The coordinator's plan").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.core.cell import JobStatus
from infermesh.core.errors import UsageError
from infermesh.obs.metrics import counter
from infermesh.obs.tracing import get_tracer
from infermesh.signal.collective import JobFigures, job_figures
from infermesh.train.planning import (
    DEFAULT_PROFILE,
    PROFILE_ENV,
    Algorithm,
    Backend,
    CollectivePlan,
    Compression,
    JobShape,
    Measurement,
    PlanChoice,
    PlannerConfig,
    link_profile,
    measured_links,
    plan_collectives,
    probe_plan,
    step_time,
)

logger = logging.getLogger(__name__)
tracer = get_tracer(__name__)

__all__ = ["PLAN_INTERVAL_S", "job_shape", "plan_job", "to_message"]

PLAN_INTERVAL_S = 10.0
"""How often the coordinator re-plans its running jobs (``coordinator start --plan-interval``)."""
DDP_BUCKET_BYTES = 25 * 2**20
"""DDP's default bucket size, for a job whose hook did not report its own."""

PLANS = counter(
    "infermesh_collective_plans", "Collective plans the coordinator issued", ("cell", "job")
)


def job_shape(job: pb.Job, figures: JobFigures) -> JobShape | None:
    """The shape the planner prices for ``job``; None before its hook reported its bytes."""
    if figures.grad_bytes <= 0:
        return None
    nproc = max(1, job.spec.nproc_per_node)
    nodes = job.world_size // nproc if job.world_size else len(job.nodes)
    bucket = figures.bucket_bytes or DDP_BUCKET_BYTES
    return JobShape(
        max(1, nodes),
        nproc,
        figures.grad_bytes,
        bucket_bytes=min(bucket, figures.grad_bytes),
        backend=Backend.GLOO if figures.backend == "gloo" else Backend.NCCL,
    )


def plan_job(
    job: pb.Job, figures: JobFigures, *, min_gain: float = 0.1, explore_within: float = 0.2
) -> tuple[JobShape, CollectivePlan, bool] | None:
    """``(shape, plan, probe)`` for ``job`` from its figures; None before the job's hook
    reported its shape.

    The plans the hook measured correct their own predictions (measured / model). A plan
    never measured that the model cannot rule out -- predicted within ``explore_within`` of
    the current plan's measured time -- is proposed as a probe (``probe`` True) to run for
    one window; once the hook measured the probe, the fastest measured plan wins outright,
    and hysteresis (``min_gain``) applies again from there. While the probe has not been
    measured yet, the current plan stays."""
    shape = job_shape(job, figures)
    if shape is None:
        return None
    default = DEFAULT_PROFILE[shape.backend]
    name = job.spec.env.get(PROFILE_ENV) or default
    try:
        links = link_profile(name)
    except UsageError:
        logger.warning("job %s: unknown %s=%r; using %s", job.job_id, PROFILE_ENV, name, default)
        links = link_profile(default)
    if figures.fitted:
        intra, inter = figures.fitted.get("intra"), figures.fitted.get("inter")
        if inter is not None:
            inter = (inter[0], inter[1] / links.nics)  # the signal is a node's total
        links = links.with_measured(intra=intra, inter=inter)
    else:
        links = measured_links(links, shape, figures.bandwidths)
    config = PlannerConfig(
        algorithms=shape.backend.algorithms, min_gain=min_gain, explore_within=explore_within
    )
    current = _current(job, shape)
    choices = _measured_choices(figures)
    measured = {(c.algorithm, c.compression): seconds for c, seconds in choices}
    stats = [Measurement(c, s, step_time(c, shape, links)) for c, s in choices]
    previous = current
    if current is not None and job.plan.probe:
        if (current.algorithm, current.compression) not in measured:
            return shape, current, True  # the probe has not run a window yet
        previous = None  # measured: the fastest plan wins outright
    plan = plan_collectives(
        shape, links, stats, previous=previous, config=config, unmeasured_factor=1.0
    )
    if current is not None:
        probe = probe_plan(plan, current, measured, config.explore_within)
        if probe is not None:
            return shape, probe, True
    return shape, plan, False


def _measured_choices(figures: JobFigures) -> list[tuple[PlanChoice, float]]:
    """The plans the hook measured (``algorithm/compression/fusion`` -> seconds per step)."""
    out = []
    for label, seconds in figures.plan_seconds.items():
        try:
            algorithm, compression, fusion = label.split("/")
            choice = PlanChoice(Algorithm(algorithm), Compression(compression), int(fusion))
        except ValueError:
            continue  # a plan this coordinator does not know
        out.append((choice, seconds))
    return out


def _current(job: pb.Job, shape: JobShape) -> CollectivePlan | None:
    """``job.plan`` as the planner's ``previous`` (None when there is none yet)."""
    plan = job.plan
    if not plan.version:
        return None
    try:
        choice = PlanChoice(
            Algorithm(plan.algorithm), Compression(plan.compression), int(plan.fusion_bytes)
        )
    except ValueError:
        return None  # written by a version that knew other algorithms: plan afresh
    return CollectivePlan(
        choice, shape.nodes, shape.gpus_per_node, plan.predicted_s, version=plan.version
    )


def to_message(
    job_id: str, version: int, plan: CollectivePlan, reason: str, probe: bool = False
) -> pb.CollectivePlan:
    """The wire form of ``plan`` as version ``version`` of ``job_id``'s plan."""
    return pb.CollectivePlan(
        job_id=job_id,
        version=version,
        algorithm=plan.algorithm.value,
        compression=plan.compression.value,
        fusion_bytes=plan.fusion_bytes,
        predicted_s=plan.predicted_s,
        reason=reason,
        planned_at=time.time(),
        probe=probe,
    )


class CollectivePlanner:
    """Plans one running job at a time (:meth:`plan`); the coordinator calls it for each of
    its running jobs every :data:`PLAN_INTERVAL_S`."""

    def __init__(self, cell: str, *, min_gain: float = 0.1) -> None:
        self.cell = cell
        self.min_gain = min_gain

    def plan(
        self, job: pb.Job, samples: Iterable[tuple[str, str, float]]
    ) -> pb.CollectivePlan | None:
        """A new plan for ``job`` from its nodes' ``(name, labels, value)`` samples, or None
        when it keeps its plan (or has not reported its shape yet)."""
        if job.status != JobStatus.RUNNING.value:
            return None
        with tracer.start_as_current_span("collectives.plan") as span:
            span.set_attribute("job", job.job_id)
            planned = plan_job(job, job_figures(job.job_id, samples), min_gain=self.min_gain)
            if planned is None:
                return None
            shape, plan, probe = planned
            span.set_attribute("choice", plan.choice.label())
            current = _current(job, shape)
            if current is not None and current.choice == plan.choice and job.plan.probe == probe:
                return None
            PLANS.labels(cell=self.cell, job=job.job_id).inc()
            shown = f"{shape.nodes} node(s) x {shape.gpus_per_node} rank(s), {shape.backend.value}"
            if job.plan.probe and not probe:
                shown = f"after exploring; {shown}"
            reason = f"{plan.reason}; {shown}"
            return to_message(job.job_id, job.plan.version + 1, plan, reason, probe)
