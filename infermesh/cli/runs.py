"""``infermesh runs ls | show``: runs of infermesh-run on this machine."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from infermesh.core.errors import UsageError
from infermesh.train.runs import list_runs, load_run

app = typer.Typer(help="Runs launched by infermesh-run on this machine.", no_args_is_help=True)
RunDir = typer.Option("runs", "--run-dir", help="The --run-dir the runs were launched with.")


def _fail(e: UsageError) -> typer.Exit:
    typer.echo(f"infermesh: error: {e}", err=True)
    return typer.Exit(2)


@app.command("ls")
def ls(run_dir: str = RunDir) -> None:
    """List runs, newest first: status, restarts, duration."""
    try:
        runs = list_runs(run_dir)
    except UsageError as e:
        raise _fail(e) from None
    table = Table(
        "RUN", "NODE", "STATUS", "WORKERS", "RESTARTS", "STARTED", "DURATION", "SCRIPT", box=None
    )
    for r in runs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started))
        table.add_row(
            r.run_id,
            r.node,
            r.status,
            str(r.local_world_size),
            str(r.restarts),
            started,
            f"{r.duration:.1f}s",
            r.script,
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)


@app.command("show")
def show(
    run_id: str = typer.Argument(..., help="Run id or a unique prefix of it."),
    run_dir: str = RunDir,
) -> None:
    """Show one run: per node status, every failure and the root cause."""
    try:
        nodes = load_run(run_dir, run_id)
    except UsageError as e:
        raise _fail(e) from None
    for r in nodes:
        typer.echo(
            f"{r.run_id} on {r.node}: {r.status}, {r.local_world_size} worker(s), "
            f"{r.attempts} attempt(s), {r.duration:.1f}s, {r.script}"
        )
        for f in r.failures:
            what = f": {f['message']}" if f.get("message") else ""
            typer.echo(
                f"  attempt {f['attempt']}: rank {f['rank']} (local {f['local_rank']}) "
                f"{f['reason']}{what}"
            )
        if r.root_cause and r.root_cause.get("traceback"):
            typer.echo("  root cause:")
            for line in str(r.root_cause["traceback"]).rstrip().splitlines():
                typer.echo(f"    {line}")
        typer.echo(f"  summary: {r.path}")
