"""Small builders of node snapshots for the placement tests."""

from __future__ import annotations

from infermesh.core.cell import NodeInfo, NodeStatus

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def node(
    node_id: str,
    host: str | None = None,
    rack: str = "r1",
    *,
    slots: int = 8,
    used: int = 0,
    status: NodeStatus = NodeStatus.ALIVE,
    cell: str = "local",
    labels: dict[str, str] | None = None,
    since: float = 0.0,
    reason: str = "",
) -> NodeInfo:
    """One node; its host defaults to its own id (one agent per machine)."""
    return NodeInfo(
        node_id=node_id,
        hostname=host or node_id,
        cell=cell,
        rack=rack,
        labels=labels or {},
        slots=slots,
        used_slots=used,
        status=status,
        status_since=since,
        status_reason=reason,
    )


def grid(
    racks: int, hosts_per_rack: int, nodes_per_host: int = 1, slots: int = 8
) -> list[NodeInfo]:
    """``racks`` x ``hosts_per_rack`` x ``nodes_per_host`` identical healthy nodes."""
    out = []
    for r in range(racks):
        for h in range(hosts_per_rack):
            for n in range(nodes_per_host):
                host = f"r{r}-h{h}"
                nid = f"{host}-n{n}" if nodes_per_host > 1 else host
                out.append(node(nid, host, f"r{r}", slots=slots))
    return out
