"""``infermesh stats``: one screen about the cell."""

from __future__ import annotations

from infermesh.cli._cell import (
    JsonOpt,
    command,
    console,
    duration,
    print_json,
    status_text,
    with_connection,
)
from infermesh.client.connection import Connection
from infermesh.core.cell import JobStatus, NodeStatus


@command
@with_connection
def stats(conn: Connection, json: JsonOpt = False) -> None:
    """The cell at a glance: nodes and jobs by status, slots, heartbeats, store.

    Exit codes: 0 ok, 1 the call failed, 2 bad input.
    """
    with conn.client() as client:
        reply = client.stats()
        address = client.address
    if json:
        print_json(reply)
        return
    out = console()
    out.print(f"cell {reply.cell} at {address}, up {duration(reply.uptime_s)}", highlight=False)

    def counts(by: dict[str, int], order: list[str]) -> list[object]:
        parts: list[object] = []
        for name in order + sorted(set(by) - set(order)):
            if by.get(name):
                parts += [", " if parts else "", status_text(name), f" {by[name]}"]
        return parts or ["none"]

    nodes = dict(reply.nodes_by_status)
    jobs = dict(reply.jobs_by_status)
    out.print(
        f"  nodes:      {sum(nodes.values())} (",
        *counts(nodes, [s.value for s in NodeStatus]),
        ")",
        sep="",
        highlight=False,
    )
    out.print(
        f"  jobs:       {sum(jobs.values())} (",
        *counts(jobs, [s.value for s in JobStatus]),
        ")",
        sep="",
        highlight=False,
    )
    free = reply.slots_total - reply.slots_used
    out.print(
        f"  slots:      {reply.slots_used} used of {reply.slots_total} ({free} free)",
        highlight=False,
    )
    out.print(f"  heartbeats: {reply.heartbeats}", highlight=False)
    out.print(f"  store:      {reply.store} (revision {reply.store_revision})", highlight=False)
