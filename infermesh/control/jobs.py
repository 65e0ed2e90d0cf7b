"""The job table: submission, placement, assignment to agents, progress and the lifecycle.

``PENDING -> PLACED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED``; a running job that loses
a node goes back to PLACED (re-planned) until its next rendezvous round closes. The manager
reacts to three inputs: submissions and cancellations (API), node status changes
(membership) and agents' job reports and log lines (heartbeat stream). Agents receive their
work as :class:`Assignment` messages on the heartbeat stream and stop orders the same way.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from dataclasses import replace
from typing import Protocol

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.control.membership import Membership
from infermesh.control.records import Records
from infermesh.control.rendezvous import Rendezvous
from infermesh.core.cell import (
    JobStatus,
    NodeInfo,
    NodeStatus,
    Placement,
    PlacementRefused,
    PlacementRequest,
)
from infermesh.core.errors import QuotaExceeded, UsageError
from infermesh.obs.metrics import counter, gauge
from infermesh.obs.tracing import get_tracer
from infermesh.train.planning.api import format_bytes
from infermesh.train.planning.placement import format_placement, plan_placement

logger = logging.getLogger(__name__)
tracer = get_tracer(__name__)

JOB_TRANSITIONS = counter("infermesh_job_transitions", "Job status changes", ("cell", "job"))
JOB_STEP = gauge("infermesh_job_step", "Latest training step reported", ("cell", "job"))
STRAGGLERS = counter(
    "infermesh_job_stragglers", "Straggler reports from jobs' comm hooks", ("cell", "job", "node")
)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$")
MAX_LOG_LINES = 20_000
PROGRESS_PERSIST_S = 5.0
RATE_WINDOW_S = 2.0
"""A job's steps/s is measured over windows of at least this many seconds."""


class JobNotFound(KeyError):
    pass


class QuotaCheck(Protocol):
    """Tenant limits (see :class:`~infermesh.control.policy.Policy`)."""

    def admit(self, job: pb.Job, active: list[pb.Job]) -> None: ...

    def node_cap(self, job: pb.Job, active: list[pb.Job]) -> tuple[int, str] | None: ...


def validate_job_spec(spec: pb.JobSpec) -> None:
    """Reject a spec that can never run, naming the field and the fix."""
    if not spec.entrypoint:
        raise UsageError("job spec: entrypoint is empty; give the training script to run")
    if spec.name and not NAME_RE.match(spec.name):
        raise UsageError(
            f"job spec: name {spec.name!r} is not valid: use up to 41 letters, digits, '.', '_' "
            "or '-'"
        )
    if spec.nproc_per_node < 1:
        raise UsageError(f"job spec: nproc_per_node is {spec.nproc_per_node}; it must be >= 1")
    if spec.nodes_min < 1:
        raise UsageError(f"job spec: nodes_min is {spec.nodes_min}; it must be >= 1")
    if spec.nodes_max and spec.nodes_max < spec.nodes_min:
        raise UsageError(
            f"job spec: nodes_max {spec.nodes_max} < nodes_min {spec.nodes_min}; use --nnodes "
            "MIN:MAX with MIN <= MAX (or auto)"
        )
    if spec.max_restarts < 0:
        raise UsageError(f"job spec: max_restarts is {spec.max_restarts}; it must be >= 0")


class JobManager:
    def __init__(self, records: Records, membership: Membership) -> None:
        self.records = records
        self.cell = records.cell
        self.membership = membership
        self.jobs: dict[str, pb.Job] = {}
        self.reports: dict[str, dict[str, pb.JobReport]] = {}
        self.logs: dict[str, deque[pb.LogLine]] = {}
        self.log_seq = 0
        self.changed = asyncio.Condition()
        self.rendezvous = Rendezvous(self.cell, self.expected_nodes, self.on_round)
        self._next_id = 0
        self._progress: dict[str, tuple[int, float, float]] = {}  # job -> (step, t, persisted)
        self.quota: QuotaCheck | None = None
        membership.listeners.append(self.on_node_change)

    # -- loading ---------------------------------------------------------------------------
    async def load(self) -> None:
        loaded = await self.records.load("jobs", pb.Job)
        loaded.sort(key=lambda j: j.created_at)  # the table is kept oldest first
        for job in loaded:
            self.jobs[job.job_id] = job
            self.reports[job.job_id] = {}
            number = job.job_id.rsplit("-", 1)[-1]
            if number.isdigit():
                self._next_id = max(self._next_id, int(number))
            if not JobStatus(job.status).terminal and job.round:
                # on_round keeps the round's members first in job.nodes
                members = job.world_size // max(1, job.spec.nproc_per_node)
                self.rendezvous.resume(job.job_id, job.round, list(job.nodes[:members]))
        for job_id, lines in (await self.records.load_logs(self.jobs)).items():
            self.logs[job_id] = deque(lines, maxlen=MAX_LOG_LINES)
            self.log_seq = max([self.log_seq, *(line.seq for line in lines)])
        logger.info("loaded %d job(s) from the store", len(self.jobs))

    # -- views -----------------------------------------------------------------------------
    def active(self) -> list[pb.Job]:
        return [j for j in self.jobs.values() if not JobStatus(j.status).terminal]

    def used_slots(self, node_id: str, *, besides: str = "") -> int:
        """Slots the active jobs (other than ``besides``) hold on a node."""
        return sum(
            j.spec.nproc_per_node
            for j in self.active()
            if node_id in j.nodes and j.job_id != besides
        )

    def jobs_on(self, node_id: str) -> list[str]:
        return [j.job_id for j in self.active() if node_id in j.nodes]

    def node_infos(self, *, besides: str = "") -> list[NodeInfo]:
        """Node snapshots for the planner; ``besides``: a job re-planned on its own slots."""
        return [
            e.info(self.used_slots(n, besides=besides)) for n, e in self.membership.nodes.items()
        ]

    def newest(self, status: str = "", limit: int = 0) -> list[pb.Job]:
        """Jobs newest first, only those in ``status`` if given, at most ``limit`` (0: all).

        The table is ordered by creation (sorted at load, new jobs appended), so this walks
        it backwards and stops at ``limit`` instead of sorting every record.
        """
        out: list[pb.Job] = []
        for job in reversed(self.jobs.values()):
            if status and job.status != status:
                continue
            out.append(job)
            if len(out) == limit:
                break
        return out

    def get(self, job_id: str) -> pb.Job:
        job = self.jobs.get(job_id)
        if job is None:
            known = ", ".join(sorted(self.jobs)[-5:]) or "none yet"
            raise JobNotFound(
                f"no job {job_id!r} in cell {self.cell} (recent: {known}); list them with "
                "`infermesh jobs ls`"
            )
        return job

    def expected_nodes(self, run_id: str) -> tuple[list[str], int, int] | None:
        job = self.jobs.get(run_id)
        if job is None:
            return None
        alive = [
            n
            for n in job.nodes
            if (e := self.membership.get(n)) is not None and e.liveness is NodeStatus.ALIVE
        ]
        return alive, job.spec.nodes_min, self._nodes_max(job)

    def _nodes_max(self, job: pb.Job) -> int:
        return job.spec.nodes_max or max(job.spec.nodes_min, len(self.membership.nodes))

    # -- placement -------------------------------------------------------------------------
    def _quota_cap(self, job: pb.Job) -> tuple[int, str] | None:
        return None if self.quota is None else self.quota.node_cap(job, self.active())

    def _request(self, job: pb.Job, keep: tuple[str, ...] = ()) -> PlacementRequest:
        nodes_max = self._nodes_max(job)
        cap = self._quota_cap(job)
        if cap is not None and cap[0] >= job.spec.nodes_min:  # below: _try_place waits
            nodes_max = min(nodes_max, cap[0])
        return PlacementRequest(
            job_id=job.job_id,
            nodes_min=job.spec.nodes_min,
            nodes_max=nodes_max,
            nproc_per_node=job.spec.nproc_per_node,
            cell=job.spec.cell or None,
            constraints=dict(job.spec.constraints),
            keep=keep,
        )

    def _plan(self, job: pb.Job, keep: tuple[str, ...] = ()) -> tuple[Placement, list[NodeInfo]]:
        nodes = self.node_infos(besides=job.job_id)
        with tracer.start_as_current_span("placement.plan") as span:
            span.set_attribute("job", job.job_id)
            span.set_attribute("nodes_total", len(nodes))
            placement = plan_placement(self._request(job, keep), nodes, now=time.time())
            span.set_attribute("nodes_chosen", len(placement.nodes))
        return placement, nodes

    def _feasible(self, job: pb.Job) -> None:
        """Raise PlacementRefused when the cell could never run the job, even if idle."""
        idle = [
            replace(n, used_slots=0, status=NodeStatus.ALIVE)
            for n in self.node_infos()
            if n.status is not NodeStatus.DEAD
        ]
        try:
            plan_placement(self._request(job), idle, now=time.time())
        except PlacementRefused:
            self._plan(job)  # raises with the reasons that name the real state
            raise

    async def submit(self, spec: pb.JobSpec, *, dry_run: bool = False) -> tuple[pb.Job, str]:
        validate_job_spec(spec)
        name = spec.name or "job"
        job_id = f"{name}-{self._next_id + 1}"
        job = pb.Job(job_id=job_id, spec=spec, status=JobStatus.PENDING.value)
        job.created_at = job.updated_at = time.time()
        if dry_run:
            placement, nodes = self._plan(job)
            return job, format_placement(placement, nodes)
        if self.quota is not None:
            self.quota.admit(job, self.active())
        self._feasible(job)
        self._next_id += 1
        self.jobs[job.job_id] = job
        self.reports[job.job_id] = {}
        self.logs[job.job_id] = deque(maxlen=MAX_LOG_LINES)
        await self._event(job, "", JobStatus.PENDING, "submitted")
        await self.records.put("jobs", job.job_id, job)
        table = await self._try_place(job)
        return job, table

    async def _try_place(self, job: pb.Job) -> str:
        try:
            cap = self._quota_cap(job)
            if cap is not None and cap[0] < job.spec.nodes_min:
                raise QuotaExceeded(cap[1])
            placement, nodes = self._plan(job)
        except (PlacementRefused, QuotaExceeded) as refused:
            if job.message != str(refused):
                job.message = str(refused)
                await self._save(job)
            return str(refused)
        job.ClearField("nodes")
        job.nodes.extend(placement.nodes)
        job.message = ""
        await self._set_status(job, JobStatus.PLACED, f"placed on {', '.join(placement.nodes)}")
        self._assign(job, list(placement.nodes))
        return format_placement(placement, nodes)

    def _assign(self, job: pb.Job, node_ids: list[str]) -> None:
        for node_id in node_ids:
            entry = self.membership.get(node_id)
            if entry is not None:
                entry.assign.append(pb.Assignment(job_id=job.job_id, spec=job.spec))
                if job.plan.version:  # a node joining later starts from the current plan
                    entry.plans.append(job.plan)

    async def set_plan(self, job: pb.Job, plan: pb.CollectivePlan) -> None:
        """Adopt the coordinator's new collective plan for ``job``; send it to its nodes."""
        job.plan.CopyFrom(plan)
        label = f"{plan.algorithm}/{plan.compression}/{format_bytes(plan.fusion_bytes)}"
        reason = (
            f"collective plan v{plan.version} {label}, predicted "
            f"{plan.predicted_s * 1e3:.2f} ms/step ({plan.reason})"
        )
        await self._event(job, job.status, JobStatus(job.status), reason)
        await self._save(job)
        for node_id in job.nodes:
            entry = self.membership.get(node_id)
            if entry is not None:
                entry.plans[:] = [p for p in entry.plans if p.job_id != job.job_id]
                entry.plans.append(job.plan)

    def _stop_on(self, job_id: str, node_ids: list[str]) -> None:
        for node_id in node_ids:
            entry = self.membership.get(node_id)
            if entry is not None:
                entry.assign[:] = [a for a in entry.assign if a.job_id != job_id]
                entry.stop.append(job_id)

    async def place_pending(self) -> None:
        for job in sorted(self.active(), key=lambda j: j.created_at):
            if job.status == JobStatus.PENDING.value:
                await self._try_place(job)
            else:
                await self._grow(job)

    async def _grow(self, job: pb.Job) -> None:
        """Add healthy nodes to a job running below its maximum (joins at the next round)."""
        cap = self._quota_cap(job)
        if len(job.nodes) >= min(self._nodes_max(job), cap[0] if cap else len(job.nodes) + 1):
            return
        try:
            placement, _ = self._plan(job, keep=tuple(job.nodes))
        except PlacementRefused:
            return
        new = [n for n in placement.nodes if n not in job.nodes]
        if not new:
            return
        job.nodes.extend(new)
        await self._event(job, job.status, JobStatus(job.status), f"adding {', '.join(new)}")
        await self._save(job)
        self._assign(job, new)

    # -- node changes ----------------------------------------------------------------------
    async def on_node_change(
        self, node_id: str, old: NodeStatus, new: NodeStatus, reason: str
    ) -> None:
        if new in (NodeStatus.DEAD, NodeStatus.QUARANTINED) or (
            old is NodeStatus.DEAD and new is not NodeStatus.DEAD
        ):
            # DEAD -> anything: the agent re-registered with a new epoch and lost its workers.
            for job in self.active():
                if node_id in job.nodes:
                    await self._lose_node(job, node_id, f"{node_id} {new.value.lower()}: {reason}")
        self.rendezvous.evaluate_all()
        if new is NodeStatus.ALIVE or old in (NodeStatus.ALIVE, NodeStatus.DRAINING):
            await self.place_pending()

    async def _lose_node(self, job: pb.Job, node_id: str, reason: str) -> None:
        remaining = [n for n in job.nodes if n != node_id]
        job.ClearField("nodes")
        job.nodes.extend(remaining)
        self._stop_on(job.job_id, [node_id])
        self.reports[job.job_id].pop(node_id, None)
        status = JobStatus.PLACED if job.status != JobStatus.PENDING.value else JobStatus.PENDING
        await self._set_status(job, status, f"lost {reason}; re-planning", force=True)
        await self._grow(job)

    # -- reports from agents -----------------------------------------------------------------
    async def on_report(self, node_id: str, report: pb.JobReport) -> None:
        job = self.jobs.get(report.job_id)
        if job is None or JobStatus(job.status).terminal or node_id not in job.nodes:
            if report.state == "running":
                self._stop_on(report.job_id, [node_id])
            return
        self.reports[job.job_id][node_id] = report
        await self._progress_update(job, report)
        if report.state == "succeeded":
            members = self._round_members(job)
            if members <= self._succeeded(job):
                # a node added since the round closed (still joining) is stopped by _finish
                await self._finish(job, JobStatus.SUCCEEDED, "all nodes finished")
        elif report.state == "failed":
            message = f"{node_id}: {report.message or f'exit code {report.exit_code}'}"
            await self._finish(job, JobStatus.FAILED, message)

    async def _progress_update(self, job: pb.Job, report: pb.JobReport) -> None:
        if report.step < 0 or report.step <= job.step:
            return
        now = time.monotonic()
        step0, t0, persisted = self._progress.get(job.job_id, (report.step, now, 0.0))
        # every node reports the job's step, a few ms apart: a rate over such a gap would be
        # thousands of steps/s. Measure over RATE_WINDOW_S at least.
        if now - t0 >= RATE_WINDOW_S:
            rate = (report.step - step0) / (now - t0)
            job.steps_per_s = rate if not job.steps_per_s else 0.7 * job.steps_per_s + 0.3 * rate
            step0, t0 = report.step, now
        job.step = report.step
        job.restarts = max(job.restarts, report.restarts)
        JOB_STEP.labels(cell=self.cell, job=job.job_id).set(job.step)
        if now - persisted > PROGRESS_PERSIST_S:
            await self._save(job)
            persisted = now
        self._progress[job.job_id] = (step0, t0, persisted)

    async def on_straggler(self, job_id: str, rank: str, ratio: float) -> str | None:
        """A worker's hook found ``rank`` slow: record it; return the node that hosts it."""
        job = self.jobs.get(job_id)
        if job is None or JobStatus(job.status).terminal or not rank.isdigit():
            return None
        index = int(rank) // max(1, job.spec.nproc_per_node)
        node_id = job.nodes[index] if index < len(job.nodes) else ""
        STRAGGLERS.labels(cell=self.cell, job=job_id, node=node_id or "?").inc()
        reason = f"rank {rank} on {node_id or '?'} is a straggler: {ratio:.1f}x its peers' time"
        job.message = reason
        await self._event(job, job.status, JobStatus(job.status), reason)
        await self._save(job)
        return node_id or None

    async def on_logs(self, lines: list[pb.LogLine]) -> None:
        by_job: dict[str, list[pb.LogLine]] = {}
        for line in lines:
            if line.job_id in self.jobs:
                self.log_seq += 1
                line.seq = self.log_seq
                by_job.setdefault(line.job_id, []).append(line)
        for job_id, batch in by_job.items():
            self.logs.setdefault(job_id, deque(maxlen=MAX_LOG_LINES)).extend(batch)
            await self.records.append_logs(job_id, batch)
        if by_job:
            async with self.changed:
                self.changed.notify_all()

    async def on_round(self, run_id: str, round_: int, members: list[str]) -> None:
        job = self.jobs.get(run_id)
        if job is None or JobStatus(job.status).terminal:
            return
        rest = [n for n in job.nodes if n not in members]
        job.ClearField("nodes")
        job.nodes.extend(members + rest)
        job.round = round_
        job.world_size = len(members) * job.spec.nproc_per_node
        job.restarts = max(job.restarts, round_ - 1)
        job.message = ""
        await self._set_status(
            job,
            JobStatus.RUNNING,
            f"round {round_}: {len(members)} node(s), world size {job.world_size}",
            force=True,
        )

    # -- lifecycle -------------------------------------------------------------------------
    async def cancel(self, job_id: str) -> pb.Job:
        job = self.get(job_id)
        if not JobStatus(job.status).terminal:
            await self._finish(job, JobStatus.CANCELLED, "cancelled by request")
        return job

    async def _finish(self, job: pb.Job, status: JobStatus, reason: str) -> None:
        job.message = reason if status is not JobStatus.SUCCEEDED else ""
        self._stop_on(job.job_id, [n for n in job.nodes if n not in self._succeeded(job)])
        self.rendezvous.close(job.job_id)
        await self._set_status(job, status, reason)
        await self.place_pending()

    def _round_members(self, job: pb.Job) -> set[str]:
        """The nodes whose workers train now: the last closed round's members still in the
        job (every node of the job before its first round)."""
        state = self.rendezvous.runs.get(job.job_id)
        members = {n for n in (state.members if state else ()) if n in job.nodes}
        return members or set(job.nodes)

    def _succeeded(self, job: pb.Job) -> set[str]:
        return {n for n, r in self.reports.get(job.job_id, {}).items() if r.state == "succeeded"}

    async def _set_status(
        self, job: pb.Job, status: JobStatus, reason: str, *, force: bool = False
    ) -> None:
        old = job.status
        if old == status.value and not force:
            return
        job.status = status.value
        await self._event(job, old, status, reason)
        await self._save(job)
        if old != status.value:
            JOB_TRANSITIONS.labels(cell=self.cell, job=job.job_id).inc()

    async def _save(self, job: pb.Job) -> None:
        job.updated_at = time.time()
        await self.records.put("jobs", job.job_id, job)
        async with self.changed:
            self.changed.notify_all()

    async def _event(self, job: pb.Job, old: str, new: JobStatus, reason: str) -> None:
        logger.info("job %s: %s -> %s (%s)", job.job_id, old or "-", new.value, reason)
        event = pb.Event(kind="job", subject=job.job_id, from_state=old, to_state=new.value)
        event.reason = reason
        await self.records.append_event(event)
