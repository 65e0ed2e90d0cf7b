"""``infermesh jobs submit | ls | show | logs | cancel``: jobs of the cell.

``submit`` composes ``configs/job/<NAME>.yaml`` with the overrides (see
:mod:`infermesh.train.launcher.job_config`), builds the same JobSpec ``infermesh-run --nnodes``
would, sends it, and follows its logs like ``infermesh-run`` does.
"""

from __future__ import annotations

import json as jsonlib
import sys
from typing import Annotated

import typer

from infermesh.cli._cell import (
    EXIT_HELP,
    JsonOpt,
    ago,
    command,
    console,
    duration,
    print_json,
    status_text,
    table,
    to_dict,
    with_connection,
)
from infermesh.client.connection import Connection
from infermesh.client.coordinator import pb
from infermesh.train.launcher.job_config import job_from_config
from infermesh.train.launcher.submit import follow as follow_job
from infermesh.train.launcher.submit import job_spec
from infermesh.train.planning.api import format_bytes

FOLLOW_HELP = "Following ends with the job's code: 0 SUCCEEDED, 1 FAILED, 130 CANCELLED/Ctrl-C."
app = typer.Typer(
    help=f"The cell's jobs: submit, list, inspect, logs, cancel. {EXIT_HELP} {FOLLOW_HELP}",
    no_args_is_help=True,
)
JobArg = Annotated[str, typer.Argument(help="Job id, as `infermesh jobs ls` shows it.")]


def _print_line(line: pb.LogLine) -> None:
    """The line as its launcher printed it (``[node r0 l0]: ...`` for a worker's)."""
    sys.stdout.write(f"{line.text}\n")
    sys.stdout.flush()


def _print_json_line(line: pb.LogLine) -> None:
    sys.stdout.write(jsonlib.dumps(to_dict(line), sort_keys=True) + "\n")
    sys.stdout.flush()


@app.command("submit")
@command
@with_connection
def submit(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="job=NAME (configs/job/NAME.yaml) then key=value overrides, "
            "e.g. job=tiny_gpt trainer.max_steps=200 launch.nproc_per_node=2.",
            show_default=False,
        ),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Print the job id and return; do not follow.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the placement the coordinator would choose."),
    ] = False,
    config_dir: Annotated[
        str, typer.Option("--config-dir", help="Folder that holds job/NAME.yaml.")
    ] = "configs",
    *,
    conn: Connection,
    json: Annotated[
        bool,
        typer.Option("--json", help="Print the submission as JSON and return (like --detach)."),
    ] = False,
) -> None:
    """Submit a job from its Hydra config; then follow its logs (Ctrl-C cancels it).

    Every key and value is checked before anything is sent.

    launch.* overrides say how to run it; the others become the script's arguments.
    """
    job = job_from_config(config_dir, list(overrides or []))
    spec = job_spec(job.options, job.launch.nproc_per_node)
    with conn.client() as client:
        reply = client.submit_job(spec, dry_run=dry_run)
        if json:
            print_json(reply)
            return
        out = console()
        if dry_run:
            out.print(
                f"dry run: {job.name} would run {spec.entrypoint} {' '.join(spec.args)} "
                f"with {spec.nproc_per_node} worker(s) per node on "
                f"{spec.nodes_min}:{spec.nodes_max or 'auto'} node(s)",
                markup=False,
                highlight=False,
            )
            out.print(reply.placement, markup=False, highlight=False)
            return
        j = reply.job
        out.print(
            f"infermesh: submitted {j.job_id} to {client.address} ({job.config.name}; "
            f"{spec.nproc_per_node} worker(s) per node, nodes "
            f"{spec.nodes_min}:{spec.nodes_max or 'auto'}); ",
            status_text(j.status),
            sep="",
            highlight=False,
        )
        if reply.placement:
            out.print(reply.placement, markup=False, highlight=False)
        if detach:
            typer.echo(j.job_id)
            return
        code = follow_job(client, j.job_id, prog="infermesh", write=_print_line)
    raise typer.Exit(code)


@app.command("ls")
@command
@with_connection
def ls(
    status: Annotated[
        str,
        typer.Option("--status", help="Only jobs in this status (PENDING, RUNNING, FAILED...)."),
    ] = "",
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="At most this many, newest first (0: all).")
    ] = 0,
    *,
    conn: Connection,
    json: JsonOpt = False,
) -> None:
    """List jobs, newest first: status, nodes, world size, step, restarts, age."""
    with conn.client() as client:
        jobs = client.list_jobs(status.strip().upper(), limit)
    if json:
        print_json(pb.ListJobsResponse(jobs=jobs))
        return
    t = table("JOB", "STATUS", "NODES", "WORLD", "STEP", "STEPS/S", "RESTARTS", "AGE", "MESSAGE")
    for j in jobs:
        t.add_row(
            j.job_id,
            status_text(j.status),
            ",".join(j.nodes) or "-",
            str(j.world_size),
            str(j.step),
            f"{j.steps_per_s:.2f}" if j.steps_per_s else "-",
            str(j.restarts),
            ago(j.created_at),
            j.message[:80],
        )
    out = console()
    out.print(t)
    if not jobs:
        out.print(f"no {status.upper() + ' ' if status else ''}jobs")


def _plan_text(plan: pb.CollectivePlan) -> str:
    """The coordinator's collective plan of a job, in one line."""
    if not plan.version:
        return "no plan from the coordinator yet"
    return (
        f"v{plan.version} {plan.algorithm}/{plan.compression}/{format_bytes(plan.fusion_bytes)}, "
        f"predicted {plan.predicted_s * 1e3:.2f} ms/step ({plan.reason})"
    )


@app.command("show")
@command
@with_connection
def show(job: JobArg, conn: Connection, json: JsonOpt = False) -> None:
    """Show one job: spec, status, nodes, progress and its events."""
    with conn.client() as client:
        detail = client.get_job(job)
    if json:
        print_json(detail)
        return
    j, spec = detail.job, detail.job.spec
    out = console()
    out.print(f"[bold]{j.job_id}[/bold] ", status_text(j.status), sep="")
    rows = [
        ("message", j.message or "-"),
        ("created", f"{ago(j.created_at)} (updated {ago(j.updated_at)})"),
        ("run time", duration(j.updated_at - j.created_at)),
        ("nodes", ", ".join(j.nodes) or "none"),
        ("world size", f"{j.world_size} ({spec.nproc_per_node} per node)"),
        ("nnodes", f"{spec.nodes_min}:{spec.nodes_max or 'auto'}"),
        ("round", str(j.round)),
        ("step", f"{j.step} ({j.steps_per_s:.2f} steps/s)" if j.steps_per_s else str(j.step)),
        ("restarts", f"{j.restarts} of {spec.max_restarts}"),
        ("collectives", _plan_text(j.plan)),
        ("command", f"{spec.entrypoint} {' '.join(spec.args)}".strip()),
        ("workdir", spec.workdir or "-"),
    ]
    for key, value in rows:
        out.print(f"  {key + ':':<12} {value}", markup=False, highlight=False)
    if detail.events:
        out.print("events:")
        t = table("  WHEN", "FROM", "TO", "REASON")
        for e in detail.events:
            t.add_row(f"  {ago(e.ts)}", e.from_state or "-", status_text(e.to_state), e.reason)
        out.print(t)


@app.command("logs")
@command
@with_connection
def logs(
    job: JobArg,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Stream until the job ends; exit with its code."),
    ] = False,
    tail: Annotated[
        int, typer.Option("--tail", min=0, help="Only the last N lines kept so far (0: all).")
    ] = 0,
    *,
    conn: Connection,
    json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (JSON Lines).")
    ] = False,
) -> None:
    """Print a job's log lines (kept by the coordinator, so they outlive the nodes).

    With -f, Ctrl-C stops following and leaves the job running.
    """
    write = _print_json_line if json else _print_line
    with conn.client() as client:
        if not follow:
            for line in client.job_logs(job, tail=tail):
                write(line)
            return
        code = follow_job(
            client,
            job,
            tail=tail,
            cancel_on_interrupt=False,
            prog="infermesh",
            write=write,
            summary=sys.stderr,
        )
    raise typer.Exit(code)


@app.command("cancel")
@command
@with_connection
def cancel(job: JobArg, conn: Connection, json: JsonOpt = False) -> None:
    """Cancel a job: its workers are stopped on every node."""
    with conn.client() as client:
        before = client.get_job(job).job.status
        result = client.cancel_job(job)
    if json:
        print_json(result)
        return
    if before == result.status:
        console().print(f"{result.job_id} already ", status_text(result.status), sep="")
    else:
        console().print(f"{result.job_id}: {before} -> ", status_text(result.status), sep="")
