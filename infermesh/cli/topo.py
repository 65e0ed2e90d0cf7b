"""``infermesh topo``: the collective topology planner from the command line."""

from __future__ import annotations

import json
import sys

import typer

from infermesh.core.errors import UsageError
from infermesh.train.planning import (
    PROFILES,
    Algorithm,
    Compression,
    JobShape,
    PlannerConfig,
    describe,
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
) -> str:
    """What ``infermesh topo plan`` prints; raises UsageError on bad input."""
    links = link_profile(profile)
    config = PlannerConfig(
        algorithms=tuple(parse_choice(Algorithm, a, "algorithm") for a in _names(algorithms))
        or tuple(Algorithm),
        compressions=tuple(
            parse_choice(Compression, c, "compression") for c in _names(compressions)
        ),
    )
    n = parse_bytes(grad_bytes)
    job = JobShape(nodes, gpus_per_node, n, bucket_bytes=min(parse_bytes(bucket), n))
    plan = plan_collectives(job, links, config=config)
    if as_json:
        return json.dumps(plan.to_dict(), indent=2)
    head = (
        f"{nodes} node(s) x {gpus_per_node} rank(s), {grad_bytes} of gradients per step, "
        f"links {links.name} (intra {links.intra.cls.value}: {links.intra.source}; "
        f"inter {links.nics} x {links.inter.cls.value}: {links.inter.source})"
    )
    return head + "\n" + describe(plan)


@app.command("plan")
def plan(
    nodes: int = typer.Option(..., "--nodes", min=1, help="Nodes in the job."),
    gpus_per_node: int = typer.Option(..., "--gpus-per-node", min=1, help="Ranks per node."),
    profile: str = typer.Option(
        "h100-nvlink-400g", "--link-profile", help=f"Hardware profile: {_PROFILE_NAMES}."
    ),
    grad_bytes: str = typer.Option(
        ..., "--bytes", help="Gradient bytes all-reduced per step, e.g. 100MB, 25MiB, 4096."
    ),
    bucket: str = typer.Option("25MiB", "--bucket", help="DDP bucket size (bucket_cap_mb)."),
    compression: str = typer.Option(
        "none",
        "--compression",
        help="Compressions allowed, comma-separated: none,fp16,bf16,powersgd.",
    ),
    algorithm: str = typer.Option(
        "", "--algorithm", help="Algorithms allowed, comma-separated (default: all)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Print every alternative with its predicted time, and the chosen plan (a dry run).

    The job shape is given on the command line; reading a live job's shape and measured
    collective times from the coordinator comes with the control plane.
    """
    try:
        typer.echo(
            plan_text(
                nodes, gpus_per_node, profile, grad_bytes, bucket, compression, algorithm, as_json
            )
        )
    except UsageError as exc:
        print(f"infermesh topo plan: error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
