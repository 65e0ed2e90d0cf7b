"""The coordinator's gRPC servicer: argument checks, status codes, and calls into the cell.

Every handler maps our errors to gRPC status codes with a message that names the problem:
``INVALID_ARGUMENT`` (bad input), ``NOT_FOUND`` (unknown node or job), ``ALREADY_EXISTS``
(duplicate node id), ``FAILED_PRECONDITION`` (placement refused, stale epoch, closed
rendezvous), ``DEADLINE_EXCEEDED`` (rendezvous round did not close). Nothing is written to the
store before a request has been validated.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.client.generated import coordinator_pb2_grpc as pb_grpc
from infermesh.control.jobs import JobNotFound
from infermesh.control.membership import DuplicateNode, StaleEpoch
from infermesh.control.rendezvous import RendezvousClosed
from infermesh.core.cell import JobStatus, NodeStatus, PlacementRefused
from infermesh.core.errors import PermissionDenied, QuotaExceeded, Unauthenticated, UsageError
from infermesh.obs.tracing import get_tracer

if TYPE_CHECKING:
    from infermesh.control.coordinator import Coordinator

logger = logging.getLogger(__name__)
tracer = get_tracer(__name__)
T = TypeVar("T")
_SUSPECT = NodeStatus.SUSPECT

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (DuplicateNode, grpc.StatusCode.ALREADY_EXISTS),
    (StaleEpoch, grpc.StatusCode.FAILED_PRECONDITION),
    (PlacementRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (RendezvousClosed, grpc.StatusCode.FAILED_PRECONDITION),
    (JobNotFound, grpc.StatusCode.NOT_FOUND),
    (KeyError, grpc.StatusCode.NOT_FOUND),
    (UsageError, grpc.StatusCode.INVALID_ARGUMENT),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
]


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and not isinstance(error, JobNotFound):
        return f"no node {error.args[0]!r} in this cell; list them with `infermesh nodes ls`"
    return str(error.args[0]) if isinstance(error, KeyError) else str(error)


def rpc(
    handler: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Translate our errors into gRPC status codes for a unary handler."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await handler(self, request, context)
        except Exception as error:
            for kind, code in _CODES:
                if isinstance(error, kind):
                    await context.abort(code, _message(error))
            logger.exception("%s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
            raise  # unreachable: abort raises

    return wrapper


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self.membership = coordinator.membership
        self.jobs = coordinator.jobs

    # -- membership ------------------------------------------------------------------------
    @rpc
    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        spec = request.spec
        if not spec.cell:
            spec.cell = self.c.cell
        elif spec.cell != self.c.cell:
            raise UsageError(
                f"node {spec.node_id} belongs to cell {spec.cell!r}, this coordinator runs cell "
                f"{self.c.cell!r}; start the agent with --cell {self.c.cell}"
            )
        node = await self.membership.register(spec, request.epoch)
        return pb.RegisterResponse(
            epoch=node.epoch,
            heartbeat_interval_s=self.membership.heartbeat_interval_s,
            cell=self.c.cell,
        )

    async def Heartbeat(
        self, request_iterator: AsyncIterator[pb.AgentHeartbeat], context: Any
    ) -> AsyncIterator[pb.CoordinatorMessage]:
        node_id, epoch = "", 0
        try:
            async for beat in request_iterator:
                if beat.__class__ is not pb.AgentHeartbeat:  # the guard's stand-in: no parse
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, beat.text)
                try:
                    entry = self.membership.heartbeat(beat.node_id, beat.epoch)
                except StaleEpoch as stale:
                    yield pb.CoordinatorMessage(ack_seq=beat.seq, fenced=str(stale))
                    continue
                if not node_id:
                    node_id, epoch = beat.node_id, beat.epoch
                    entry.stream_open = True
                if entry.liveness is _SUSPECT:
                    await self.membership.revive(entry)
                await self.c.on_heartbeat(entry, beat)
                # no answer unless there is something to say: replies cost as much as beats
                if entry.assign or entry.stop or entry.plans or beat.want_ack:
                    reply = pb.CoordinatorMessage(ack_seq=beat.seq, received_at=time.time())
                    if entry.assign:
                        reply.assign.extend(entry.assign)
                        entry.assign.clear()
                    if entry.stop:
                        reply.stop_jobs.extend(entry.stop)
                        entry.stop.clear()
                    if entry.plans:
                        reply.plans.extend(entry.plans)
                        entry.plans.clear()
                    yield reply
        finally:
            if node_id:
                await self.membership.stream_closed(node_id, epoch)

    @rpc
    async def ListNodes(self, request: pb.ListNodesRequest, context: Any) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(nodes=[self.c.node_view(n) for n in sorted(self.c.nodes())])

    @rpc
    async def GetNode(self, request: pb.GetNodeRequest, context: Any) -> pb.NodeDetail:
        return self.c.node_detail(request.node_id, request.max_age_s or 10.0)

    @rpc
    async def SetNodeState(self, request: pb.SetNodeStateRequest, context: Any) -> pb.Node:
        return await self.c.set_node_state(request.node_id, request.action, request.reason)

    # -- jobs ------------------------------------------------------------------------------
    @rpc
    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Any) -> pb.SubmitJobResponse:
        with tracer.start_as_current_span("coordinator.submit") as span:
            job, table = await self.jobs.submit(request.spec, dry_run=request.dry_run)
            span.set_attribute("job", job.job_id)
        return pb.SubmitJobResponse(job=job, placement=table)

    @rpc
    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        if request.status and request.status not in JobStatus.__members__:
            raise UsageError(
                f"unknown job status {request.status!r}; use one of "
                + ", ".join(JobStatus.__members__)
            )
        return pb.ListJobsResponse(jobs=self.jobs.newest(request.status, max(request.limit, 0)))

    @rpc
    async def GetJob(self, request: pb.JobRequest, context: Any) -> pb.JobDetail:
        job = self.jobs.get(request.job_id)
        events = await self.c.events(subject=job.job_id, limit=200)
        return pb.JobDetail(job=job, events=events)

    @rpc
    async def CancelJob(self, request: pb.JobRequest, context: Any) -> pb.Job:
        return await self.jobs.cancel(request.job_id)

    async def JobLogs(self, request: pb.LogsRequest, context: Any) -> AsyncIterator[pb.LogLine]:
        try:
            job = self.jobs.get(request.job_id)
        except JobNotFound as missing:
            await context.abort(grpc.StatusCode.NOT_FOUND, _message(missing))
            return
        after = request.after_seq
        lines = [line for line in self.jobs.logs.get(job.job_id, ()) if line.seq > after]
        if request.tail > 0:
            lines = lines[-request.tail :]
        while True:
            for line in lines:
                yield line
                after = line.seq
            if not request.follow or JobStatus(job.status).terminal:
                if not request.follow:
                    return
                # one last pass: lines that arrived together with the final report
                tail = [ln for ln in self.jobs.logs.get(job.job_id, ()) if ln.seq > after]
                for line in tail:
                    yield line
                return
            async with self.jobs.changed:
                try:
                    await asyncio.wait_for(self.jobs.changed.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
            lines = [ln for ln in self.jobs.logs.get(job.job_id, ()) if ln.seq > after]

    @rpc
    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Any
    ) -> pb.ListEventsResponse:
        events = await self.c.events(subject=request.subject, limit=request.limit or 100)
        return pb.ListEventsResponse(events=events)

    @rpc
    async def Stats(self, request: pb.StatsRequest, context: Any) -> pb.StatsResponse:
        nodes = [self.c.node_view(n) for n in self.c.nodes()]
        response = pb.StatsResponse(
            cell=self.c.cell,
            slots_total=sum(n.spec.slots for n in nodes if n.status != NodeStatus.DEAD.value),
            slots_used=sum(n.used_slots for n in nodes),
            uptime_s=time.monotonic() - self.c.started,
            heartbeats=self.membership.heartbeats,
            store_revision=await self.c.store.revision(),
            store=self.c.store_url,
        )
        response.nodes_by_status.update(Counter(n.status for n in nodes))
        response.jobs_by_status.update(Counter(j.status for j in self.jobs.jobs.values()))
        return response

    @rpc
    async def ListEndpoints(
        self, request: pb.ListEndpointsRequest, context: Any
    ) -> pb.ListEndpointsResponse:
        return pb.ListEndpointsResponse(endpoints=self.c.serving_endpoints(request.kind))

    # -- rendezvous ------------------------------------------------------------------------
    @rpc
    async def RendezvousJoin(self, request: pb.JoinRequest, context: Any) -> pb.JoinResponse:
        return await self.jobs.rendezvous.join(request)

    @rpc
    async def RendezvousState(
        self, request: pb.RendezvousRequest, context: Any
    ) -> pb.RendezvousStatus:
        return self.jobs.rendezvous.status(request.run_id, request.node_id)

    @rpc
    async def RendezvousClose(
        self, request: pb.RendezvousRequest, context: Any
    ) -> pb.RendezvousStatus:
        return self.jobs.rendezvous.close(request.run_id)
