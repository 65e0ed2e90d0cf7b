"""The coordinator's rendezvous: it decides membership, rank order and when a round closes.

Launchers (``infermesh-run`` with ``--rdzv-backend infermesh --rdzv-endpoint COORD``) call
``RendezvousJoin``, which waits until the round closes. A round closes:

1. at once when every node the job is expected on has joined (agent mode: the job's assigned
   nodes that are ALIVE; a node that died or was quarantined is no longer expected), or
2. when ``nodes_max`` nodes joined, or
3. ``last_call_s`` after ``nodes_min`` nodes joined (per-node mode, or an expected node that
   never comes).

Rank order follows the job's placement (ranks of one host, then one rack, adjacent); nodes
the placement does not know come after it, grouped by address. Rank 0's offered port hosts the
round's store. Launchers of a running round poll ``RendezvousState``: ``nodes_waiting > 0``
means someone wants in, and they restart their workers to form a bigger round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.core.errors import InferMeshError, UsageError
from infermesh.obs.metrics import counter
from infermesh.obs.tracing import get_tracer

logger = logging.getLogger(__name__)
tracer = get_tracer(__name__)

ROUNDS = counter("infermesh_rendezvous_rounds", "Rendezvous rounds closed", ("cell", "job"))


class RendezvousClosed(InferMeshError):
    """The run's rendezvous is closed (job finished or cancelled): launchers should exit."""


@dataclass
class RunState:
    run_id: str
    round: int = 0
    members: list[str] = field(default_factory=list)
    waiting: dict[str, tuple[pb.JoinRequest, asyncio.Future[pb.JoinResponse]]] = field(
        default_factory=dict
    )
    closed: bool = False
    timer: asyncio.TimerHandle | None = None


Expected = Callable[[str], "tuple[list[str], int, int] | None"]
"""run id -> (expected node ids in rank order, nodes_min, nodes_max) for coordinator jobs."""
OnRound = Callable[[str, int, list[str]], Coroutine[Any, Any, None]]


class Rendezvous:
    def __init__(self, cell: str, expected: Expected, on_round: OnRound) -> None:
        self.cell = cell
        self.expected = expected
        self.on_round = on_round
        self.runs: dict[str, RunState] = {}

    def run(self, run_id: str) -> RunState:
        state = self.runs.get(run_id)
        if state is None:
            state = self.runs[run_id] = RunState(run_id)
        return state

    def resume(self, run_id: str, round_: int, members: list[str]) -> None:
        """After a coordinator restart: continue a run's round numbering."""
        state = self.run(run_id)
        state.round, state.members = round_, list(members)

    async def join(self, request: pb.JoinRequest) -> pb.JoinResponse:
        if not request.run_id or not request.node_id:
            raise UsageError("RendezvousJoin needs run_id and node_id")
        if request.nodes_min < 1 or (request.nodes_max and request.nodes_max < request.nodes_min):
            raise UsageError(
                f"bad node range {request.nodes_min}:{request.nodes_max}; use --nnodes MIN:MAX "
                "with 1 <= MIN <= MAX"
            )
        state = self.run(request.run_id)
        if state.closed:
            raise RendezvousClosed(f"rendezvous {request.run_id} is closed")
        previous = state.waiting.pop(request.node_id, None)
        if previous is not None and not previous[1].done():
            previous[1].cancel()
        future: asyncio.Future[pb.JoinResponse] = asyncio.get_running_loop().create_future()
        state.waiting[request.node_id] = (request, future)
        logger.info(
            "rendezvous %s: %s joined (%d waiting)",
            state.run_id,
            request.node_id,
            len(state.waiting),
        )
        self.evaluate(state)
        timeout = request.timeout_s or 600.0
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"rendezvous {request.run_id}: round {state.round + 1} did not close within "
                f"{timeout:.0f} s ({len(state.waiting)} node(s) waiting, needs "
                f"{request.nodes_min})"
            ) from None
        finally:
            current = state.waiting.get(request.node_id)
            if current is not None and current[1] is future:
                del state.waiting[request.node_id]
                self._disarm_if_short(state)

    def status(self, run_id: str, node_id: str) -> pb.RendezvousStatus:
        state = self.runs.get(run_id)
        if state is None:
            return pb.RendezvousStatus()
        waiting = sum(1 for n in state.waiting if n != node_id)
        return pb.RendezvousStatus(round=state.round, nodes_waiting=waiting, closed=state.closed)

    def close(self, run_id: str) -> pb.RendezvousStatus:
        state = self.run(run_id)
        state.closed = True
        for _, future in state.waiting.values():
            if not future.done():
                future.set_exception(RendezvousClosed(f"rendezvous {run_id} is closed"))
        state.waiting.clear()
        return pb.RendezvousStatus(round=state.round, closed=True)

    def evaluate_all(self) -> None:
        for state in list(self.runs.values()):
            if state.waiting:
                self.evaluate(state)

    def _limits(self, state: RunState) -> tuple[list[str] | None, int, int, float]:
        first = next(iter(state.waiting.values()))[0]
        expected = self.expected(state.run_id)
        if expected is None:
            return None, first.nodes_min, first.nodes_max, first.last_call_s or 30.0
        nodes, nmin, nmax = expected
        return nodes, nmin, nmax, first.last_call_s or 10.0

    def evaluate(self, state: RunState) -> None:
        if not state.waiting or state.closed:
            return
        expected, nmin, nmax, last_call = self._limits(state)
        joined = set(state.waiting)
        if (expected and set(expected) <= joined and len(joined) >= nmin) or (
            nmax and len(joined) >= nmax
        ):
            self._close_round(state, expected)
        elif len(joined) >= nmin and state.timer is None:
            loop = asyncio.get_running_loop()
            state.timer = loop.call_later(last_call, self._last_call, state)

    def _disarm_if_short(self, state: RunState) -> None:
        if state.timer is not None and not state.waiting:
            state.timer.cancel()
            state.timer = None

    def _last_call(self, state: RunState) -> None:
        state.timer = None
        if not state.waiting or state.closed:
            return
        expected, nmin, _, _ = self._limits(state)
        if len(state.waiting) >= nmin:
            self._close_round(state, expected)

    def _close_round(self, state: RunState, expected: list[str] | None) -> None:
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        joined = dict(state.waiting)
        state.waiting.clear()
        order = [n for n in (expected or []) if n in joined]
        rest = sorted((n for n in joined if n not in order), key=lambda n: (joined[n][0].addr, n))
        order += rest
        state.round += 1
        state.members = order
        master = joined[order[0]][0]
        with tracer.start_as_current_span("rendezvous.round") as span:
            span.set_attribute("job", state.run_id)
            span.set_attribute("round", state.round)
            span.set_attribute("nodes", len(order))
        ROUNDS.labels(cell=self.cell, job=state.run_id).inc()
        logger.info(
            "rendezvous %s: round %d closed with %d node(s): %s",
            state.run_id,
            state.round,
            len(order),
            ", ".join(order),
        )
        for rank, node_id in enumerate(order):
            response = pb.JoinResponse(
                round=state.round,
                group_rank=rank,
                group_world_size=len(order),
                master_addr=master.addr,
                master_port=master.port,
                nodes=order,
            )
            future = joined[node_id][1]
            if not future.done():
                future.set_result(response)
        asyncio.get_running_loop().create_task(self.on_round(state.run_id, state.round, order))
