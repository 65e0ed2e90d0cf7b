"""The liveness monitor looks at the silent head of the last-heard order, not at every node."""

from __future__ import annotations

import asyncio
import time

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.control.membership import Membership
from infermesh.control.records import Records
from infermesh.control.store import open_store
from infermesh.core.cell import NodeStatus


def _spec(i: int) -> pb.NodeSpec:
    return pb.NodeSpec(node_id=f"n{i:04d}", hostname=f"h{i}", slots=1, no_gpu_reason="test")


async def _cell(nodes: int) -> Membership:
    records = Records(open_store("memory://"), "t")
    membership = Membership(records, suspect_after_s=3, dead_after_s=10)
    for i in range(nodes):
        await membership.register(_spec(i), 0)
    return membership


def _silence(membership: Membership, node_id: str, seconds: float) -> None:
    membership.nodes[node_id].last_seen = time.monotonic() - seconds


def test_only_silent_nodes_change_and_a_beat_moves_a_node_to_the_back() -> None:
    async def go() -> None:
        m = await _cell(500)
        # everyone but n0000 and n0001 beats after them, so those two lead the order
        for i in range(2, 500):
            m.heartbeat(f"n{i:04d}", 1)
        _silence(m, "n0000", 4.0)
        _silence(m, "n0001", 11.0)
        await m.check()
        status = {n: e.shown_status() for n, e in m.nodes.items()}
        assert status["n0000"] is NodeStatus.SUSPECT
        assert status["n0001"] is NodeStatus.SUSPECT  # one step per check, as before
        assert sum(s is NodeStatus.ALIVE for s in status.values()) == 498
        await m.check()
        assert m.nodes["n0001"].shown_status() is NodeStatus.DEAD
        assert m.nodes["n0000"].shown_status() is NodeStatus.SUSPECT
        # a DEAD node is out of the order; a stale beat from it is refused as before
        assert "n0001" not in m._by_seen
        # the SUSPECT node beats again: revived and now the most recently heard from
        entry = m.heartbeat("n0000", 1)
        await m.revive(entry)
        assert entry.shown_status() is NodeStatus.ALIVE
        assert next(reversed(m._by_seen)) == "n0000"
        # registering again after DEAD brings the node back into the order
        await m.register(_spec(1), 0)
        assert m.nodes["n0001"].shown_status() is NodeStatus.ALIVE and "n0001" in m._by_seen

    asyncio.run(go())
