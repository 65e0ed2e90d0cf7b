"""``infermesh topo``: the collective topology planner from the command line."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import typer

from infermesh.cli._cell import with_connection
from infermesh.client.connection import Connection
from infermesh.core.errors import InferMeshError, UsageError
from infermesh.train.planning import (
    DEFAULT_PROFILE,
    PROFILES,
    Algorithm,
    Backend,
    Compression,
    JobShape,
    PlannerConfig,
    describe,
    format_bytes,
    link_profile,
    measured_links,
    parse_bytes,
    parse_choice,
    plan_collectives,
)

app = typer.Typer(name="topo", help="Collective topology: plan how gradients are all-reduced.")

_PROFILE_NAMES = ", ".join(p.value for p in PROFILES)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def plan_text(
    nodes: int,
    gpus_per_node: int,
    profile: str,
    grad_bytes: str,
    bucket: str = "25MiB",
    compressions: str = "none",
    algorithms: str = "",
    as_json: bool = False,
    measured: dict[str, float] | None = None,
    backend: str = "nccl",
) -> str:
    """What ``infermesh topo plan`` prints; raises UsageError on bad input.

    ``measured`` (bytes/s by link class: ``intra``, ``inter``, ``world``) calibrates the
    profile's links through :class:`LinkCalibration`, the fit the comm hook runs on its own
    timings: measured bandwidths replace the profile's, latencies stay the profile's.
    """
    n = parse_bytes(grad_bytes)
    job = JobShape(
        nodes,
        gpus_per_node,
        n,
        bucket_bytes=min(parse_bytes(bucket), n),
        backend=parse_choice(Backend, backend, "backend"),
    )
    links = measured_links(link_profile(profile), job, measured or {})
    config = PlannerConfig(
        algorithms=tuple(parse_choice(Algorithm, a, "algorithm") for a in _names(algorithms))
        or job.backend.algorithms,
        compressions=tuple(
            parse_choice(Compression, c, "compression") for c in _names(compressions)
        ),
    )
    plan = plan_collectives(job, links, config=config)
    if as_json:
        return json.dumps(plan.to_dict(), indent=2)
    head = (
        f"{nodes} node(s) x {gpus_per_node} rank(s), {grad_bytes} of gradients per step, "
        f"links {links.name} (intra {links.intra.cls.value}: {links.intra.source}; "
        f"inter {links.nics} x {links.inter.cls.value}: {links.inter.source})"
    )
    return head + "\n" + describe(plan)


@dataclass(frozen=True)
class LiveJob:
    """What the cell knows of a running job, as ``topo plan JOB`` uses it ("": not reported)."""

    text: str
    nodes: int
    ranks: int
    grad_bytes: str
    bucket: str
    backend: str
    measured: dict[str, float]


def live_shape(job_id: str, conn: Connection) -> LiveJob:
    """A running job's shape, its hook's figures and the coordinator's plan, from the cell.

    Gradient and bucket bytes and the backend come from the hook (``comm.grad_bytes``,
    ``comm.bucket_bytes``), link bandwidths from the nodes'
    ``comm.link_bandwidth_bytes_per_s`` (:func:`~infermesh.signal.collective.job_figures`,
    what the coordinator plans with).
    """
    from infermesh.signal.collective import job_figures  # zmq: only for a live job

    with conn.client() as client:
        job = client.get_job(job_id).job
        details = [client.get_node(n) for n in job.nodes]
    figures = job_figures(
        job_id, ((sig.name, sig.labels, sig.value) for d in details for sig in d.signals)
    )
    nproc = job.spec.nproc_per_node
    nodes = max(1, job.world_size // nproc if job.world_size else len(job.nodes))
    measured = figures.bandwidths
    text = (
        f"live job {job_id} ({job.status}): {nodes} node(s) x {nproc} rank(s), step {job.step}"
        + (
            f", {format_bytes(figures.grad_bytes)} of gradients per step ({figures.backend})"
            if figures.grad_bytes
            else ""
        )
        + (
            "; measured bandwidth "
            + ", ".join(f"{k} {format_bytes(v)}/s" for k, v in sorted(measured.items()))
            if measured
            else "; no collective timings reported yet (defaults from the link profile)"
        )
    )
    plan = job.plan
    if plan.version:
        text += (
            f"\nthe coordinator's plan: v{plan.version} {plan.algorithm}/{plan.compression}/"
            f"{format_bytes(plan.fusion_bytes)}, predicted {plan.predicted_s * 1e3:.3f} ms/step "
            f"({plan.reason})"
        )
    return LiveJob(
        text,
        nodes,
        nproc,
        str(figures.grad_bytes) if figures.grad_bytes else "",
        str(figures.bucket_bytes) if figures.bucket_bytes else "",
        figures.backend,
        measured,
    )


@app.command("plan")
@with_connection
def plan(
    job: str | None = typer.Argument(
        None, help="A running job's id: read its shape and measured timings from the cell."
    ),
    nodes: int = typer.Option(0, "--nodes", min=0, help="Nodes in the job."),
    gpus_per_node: int = typer.Option(0, "--gpus-per-node", min=0, help="Ranks per node."),
    profile: str = typer.Option(
        "",
        "--link-profile",
        help=f"Hardware profile: {_PROFILE_NAMES} (default: cpu-loopback on gloo, "
        "h100-nvlink-400g on nccl).",
    ),
    grad_bytes: str = typer.Option(
        "", "--bytes", help="Gradient bytes all-reduced per step, e.g. 100MB, 25MiB, 4096."
    ),
    bucket: str = typer.Option(
        "", "--bucket", help="DDP bucket size (bucket_cap_mb; default: the job's, else 25MiB)."
    ),
    compression: str = typer.Option(
        "none",
        "--compression",
        help="Compressions allowed, comma-separated: none,fp16,bf16,powersgd.",
    ),
    algorithm: str = typer.Option(
        "",
        "--algorithm",
        help="Algorithms allowed, comma-separated (default: those the backend applies; "
        "halving_doubling only when named).",
    ),
    backend: str = typer.Option(
        "",
        "--backend",
        help="Backend running the collectives (nccl, gloo): what to price (default: the "
        "job's, else nccl).",
    ),
    *,
    conn: Connection,
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Print every alternative with its predicted time, and the chosen plan (a dry run).

    Either give the shape (--nodes, --gpus-per-node, --bytes) or a running JOB: its node
    count and ranks per node, the gradient bytes per step its comm hook measured and the
    bandwidth measured per link class then come from the cell (flags override them); the
    connection options (--coordinator, --tls-dir...) say how to reach it.
    """
    try:
        head, measured = "", None
        if not job and conn != Connection():
            given = ["--coordinator"] if conn.coordinator else []
            raise UsageError(
                f"{', '.join(given + conn.tls_flags())}: the connection options are for reading "
                "a running JOB from the cell; give its id, or drop them"
            )
        if job:
            live = live_shape(job, conn)
            head, measured = live.text, live.measured
            nodes, gpus_per_node = nodes or live.nodes, gpus_per_node or live.ranks
            grad_bytes = grad_bytes or live.grad_bytes
            bucket, backend = bucket or live.bucket, backend or live.backend
        backend = backend or Backend.NCCL.value
        profile = profile or DEFAULT_PROFILE[parse_choice(Backend, backend, "backend")].value
        missing = [
            flag
            for flag, value in (
                ("--nodes", nodes),
                ("--gpus-per-node", gpus_per_node),
                ("--bytes", grad_bytes),
            )
            if not value
        ]
        if missing:
            where = "the job has reported no collective timings yet; " if job else ""
            raise UsageError(f"{where}give {', '.join(missing)} (or a running JOB id)")
        text = plan_text(
            nodes,
            gpus_per_node,
            profile,
            grad_bytes,
            bucket or "25MiB",
            compression,
            algorithm,
            as_json,
            measured,
            backend,
        )
        typer.echo(text if as_json or not head else head + "\n" + text)
    except UsageError as exc:
        print(f"infermesh topo plan: error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except InferMeshError as exc:
        print(f"infermesh topo plan: {exc}", file=sys.stderr)
        raise typer.Exit(3 if "no job" in str(exc) else 1) from None
