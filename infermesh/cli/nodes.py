"""``infermesh nodes ls | show | drain | undrain | quarantine``: the cell's nodes."""

from __future__ import annotations

from typing import Annotated

import typer

from infermesh.cli._cell import (
    EXIT_HELP,
    JsonOpt,
    ago,
    command,
    console,
    print_json,
    size,
    status_text,
    table,
    with_connection,
)
from infermesh.client.connection import Connection
from infermesh.client.coordinator import CoordinatorClient, pb

app = typer.Typer(
    help=f"The cell's nodes: list, inspect, drain, quarantine. {EXIT_HELP}",
    no_args_is_help=True,
)
NodeArg = Annotated[str, typer.Argument(help="Node id, as `infermesh nodes ls` shows it.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the node's events).")]


def _gpus(node: pb.Node) -> str:
    return str(len(node.spec.gpus)) if node.spec.gpus else "0"


@app.command("ls")
@command
@with_connection
def ls(conn: Connection, json: JsonOpt = False) -> None:
    """List nodes: status and since when, slots used/total, GPUs, last heartbeat, jobs."""
    with conn.client() as client:
        nodes = client.list_nodes()
    if json:
        print_json(pb.ListNodesResponse(nodes=nodes))
        return
    t = table("NODE", "STATUS", "SINCE", "SLOTS", "GPUS", "HEALTH", "HEARTBEAT", "RACK", "JOBS")
    for n in nodes:
        t.add_row(
            n.spec.node_id,
            status_text(n.status),
            ago(n.status_since),
            f"{n.used_slots}/{n.spec.slots}",
            _gpus(n),
            _health(n),
            ago(n.last_heartbeat),
            n.spec.rack or "-",
            ",".join(n.jobs) or "-",
        )
    out = console()
    out.print(t)
    if not nodes:
        out.print("no nodes registered; start agents with `infermesh agent start`")


def _health(n: pb.Node) -> str:
    """``ok``, or the status with its reason (``quarantine: XID 79 on gpu 2 ...``)."""
    if not n.health:
        return "-"
    if n.health == "ok" or not n.health_reason:
        return n.health
    return f"{n.health}: {n.health_reason}"


def _detail(client: CoordinatorClient, node_id: str) -> pb.NodeDetail:
    """The node with its latest events (the coordinator keeps them in its event log)."""
    detail = client.get_node(node_id)
    if not detail.events:
        detail.events.extend(client.list_events(subject=node_id, limit=20))
    return detail


@app.command("show")
@command
@with_connection
def show(node: NodeArg, conn: Connection, json: JsonOpt = False) -> None:
    """Show one node: its spec, status, GPUs, jobs and latest events."""
    with conn.client() as client:
        detail = _detail(client, node)
    if json:
        print_json(detail)
        return
    n, spec = detail.node, detail.node.spec
    out = console()
    head = status_text(n.status)
    out.print(f"[bold]{spec.node_id}[/bold] ", head, f" since {ago(n.status_since)}", sep="")
    rows = []
    if n.status_reason:
        rows.append(("reason", n.status_reason))
    if n.admin:
        rows.append(("admin", f"{n.admin} (undo: `infermesh nodes undrain {spec.node_id}`)"))
    rows += [
        ("host", f"{spec.hostname} ({', '.join(spec.addresses) or 'no address'})"),
        ("cell/rack", f"{spec.cell} / {spec.rack or '-'}"),
        ("slots", f"{n.used_slots} used of {spec.slots}"),
        ("cpus/memory", f"{spec.cpus} / {size(spec.memory_bytes)}"),
        ("epoch", str(n.epoch)),
        ("heartbeat", ago(n.last_heartbeat)),
        ("jobs", ", ".join(n.jobs) or "none"),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items())) or "none"),
    ]
    if spec.gpus:
        gpus = "; ".join(f"{g.index}: {g.name} {size(g.memory_bytes)}" for g in spec.gpus)
        rows.append(("gpus", gpus))
    else:
        rows.append(("gpus", f"none ({spec.no_gpu_reason or 'not reported'})"))
    rows.append(("health", _health(n)))
    for key, value in rows:
        out.print(f"  {key + ':':<12} {value}", markup=False, highlight=False)
    if detail.signals:
        out.print(f"signals ({len(detail.signals)} fresh, {len(detail.stale)} too old):")
        t = table("  SIGNAL", "LABELS", "VALUE", "AGE")
        for sig in detail.signals:
            t.add_row(f"  {sig.name}", sig.labels or "-", f"{sig.value:.4g}", f"{sig.age_s:.1f} s")
        out.print(t)
    if detail.stale:
        out.print("  too old: " + ", ".join(detail.stale), markup=False, highlight=False)
    if detail.events:
        out.print("events:")
        t = table("  WHEN", "FROM", "TO", "REASON")
        for e in detail.events:
            t.add_row(f"  {ago(e.ts)}", e.from_state or "-", status_text(e.to_state), e.reason)
        out.print(t)


def _set_state(node: str, action: str, reason: str, conn: Connection, json: bool) -> None:
    with conn.client() as client:
        result = client.set_node_state(node, action, reason)
    if json:
        print_json(result)
        return
    jobs = f"; jobs on it: {', '.join(result.jobs)}" if result.jobs else ""
    console().print(
        f"{result.spec.node_id}: ",
        status_text(result.status),
        f" ({result.status_reason}){jobs}",
        sep="",
    )


@app.command("drain")
@command
@with_connection
def drain(
    node: NodeArg,
    reason: ReasonOpt = "",
    *,
    conn: Connection,
    json: JsonOpt = False,
) -> None:
    """Stop placing new work on a node; jobs already there keep running."""
    _set_state(node, "drain", reason, conn, json)


@app.command("undrain")
@command
@with_connection
def undrain(
    node: NodeArg,
    reason: ReasonOpt = "",
    *,
    conn: Connection,
    json: JsonOpt = False,
) -> None:
    """Return a drained or quarantined node to service."""
    _set_state(node, "undrain", reason, conn, json)


@app.command("quarantine")
@command
@with_connection
def quarantine(
    node: NodeArg,
    reason: ReasonOpt = "",
    *,
    conn: Connection,
    json: JsonOpt = False,
) -> None:
    """Take a node out of service now: its jobs are re-planned onto other nodes."""
    _set_state(node, "quarantine", reason, conn, json)
