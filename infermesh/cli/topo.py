"""``infermesh topo``: the collective topology planner from the command line."""

from __future__ import annotations

import json
import sys

import typer

from infermesh.cli._cell import with_connection
from infermesh.client.connection import Connection
from infermesh.core.errors import InferMeshError, UsageError
from infermesh.train.planning import (
    PROFILES,
    Algorithm,
    Backend,
    Compression,
    JobShape,
    LinkCalibration,
    PlannerConfig,
    describe,
    format_bytes,
    link_profile,
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
    links = link_profile(profile)
    if measured:
        calibration = LinkCalibration(links, job)
        for link, bytes_per_s in measured.items():
            calibration.add_bandwidth(link, bytes_per_s)
        links = calibration.fit()
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


def live_shape(job_id: str, conn: Connection) -> tuple[str, int, int, str, dict[str, float]]:
    """A running job's shape and its measured figures from the coordinator ``conn`` names.

    Returns (description, nodes, ranks per node, gradient bytes per step or "", measured
    bandwidth in bytes/s by link class ``intra``/``inter``). Bytes per step come from rank
    0's ``comm.allreduce_bytes`` over the job's step; link bandwidths from the nodes'
    ``comm.link_bandwidth_bytes_per_s``.
    """
    from statistics import median

    with conn.client() as client:
        job = client.get_job(job_id).job
        details = [client.get_node(n) for n in job.nodes]
    nproc = job.spec.nproc_per_node
    nodes = max(1, job.world_size // nproc if job.world_size else len(job.nodes))
    total = 0.0
    bandwidth: dict[str, list[float]] = {"intra": [], "inter": [], "world": []}
    for detail in details:
        for sig in detail.signals:
            if sig.name == "comm.allreduce_bytes" and f"job={job_id}" in sig.labels:
                if "rank=0," in sig.labels + ",":
                    total += sig.value
            elif sig.name == "comm.link_bandwidth_bytes_per_s":
                link = sig.labels.removeprefix("link=")
                if link in bandwidth:
                    bandwidth[link].append(sig.value)
    per_step = f"{int(total / job.step)}" if total and job.step > 0 else ""
    measured = {k: median(v) for k, v in bandwidth.items() if v}
    text = (
        f"live job {job_id} ({job.status}): {nodes} node(s) x {nproc} rank(s), step {job.step}"
        + (f", {format_bytes(float(per_step))} all-reduced per step (measured)" if per_step else "")
        + (
            "; measured bandwidth "
            + ", ".join(f"{k} {format_bytes(v)}/s" for k, v in sorted(measured.items()))
            if measured
            else "; no collective timings reported yet (defaults from the link profile)"
        )
    )
    return text, nodes, nproc, per_step, measured


@app.command("plan")
@with_connection
def plan(
    job: str | None = typer.Argument(
        None, help="A running job's id: read its shape and measured timings from the cell."
    ),
    nodes: int = typer.Option(0, "--nodes", min=0, help="Nodes in the job."),
    gpus_per_node: int = typer.Option(0, "--gpus-per-node", min=0, help="Ranks per node."),
    profile: str = typer.Option(
        "h100-nvlink-400g", "--link-profile", help=f"Hardware profile: {_PROFILE_NAMES}."
    ),
    grad_bytes: str = typer.Option(
        "", "--bytes", help="Gradient bytes all-reduced per step, e.g. 100MB, 25MiB, 4096."
    ),
    bucket: str = typer.Option("25MiB", "--bucket", help="DDP bucket size (bucket_cap_mb)."),
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
        "nccl", "--backend", help="Backend running the collectives (nccl, gloo): what to price."
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
            head, live_nodes, live_ranks, live_bytes, measured = live_shape(job, conn)
            nodes, gpus_per_node = nodes or live_nodes, gpus_per_node or live_ranks
            grad_bytes = grad_bytes or live_bytes
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
            bucket,
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
