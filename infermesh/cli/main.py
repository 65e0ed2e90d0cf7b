"""``infermesh`` entry point: registers one typer sub-app per command group."""

from __future__ import annotations

import typer

import infermesh
from infermesh.cli import cell, jobs, nodes, runs, security, stats, topo
from infermesh.cli import serve as serve_cli
from infermesh.cli.sim import sim_app

app = typer.Typer(
    name="infermesh",
    help="InferMesh: training-first orchestration for PyTorch.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(runs.app, name="runs")
app.add_typer(sim_app, name="sim")
app.add_typer(topo.app)
app.add_typer(cell.coordinator_app, name="coordinator")
app.add_typer(cell.agent_app, name="agent")
app.command("up")(cell.up)
app.add_typer(nodes.app, name="nodes")
app.add_typer(jobs.app, name="jobs")
app.command("stats")(stats.stats)
app.command("serve")(serve_cli.serve)
app.add_typer(serve_cli.router_app, name="router")
app.add_typer(security.certs_app, name="certs")
app.add_typer(security.rbac_app, name="rbac")
app.add_typer(security.quota_app, name="quota")
app.add_typer(security.audit_app, name="audit")
app.command("whoami")(security.whoami)


@app.command()
def version() -> None:
    """Print the InferMesh version."""
    typer.echo(f"infermesh {infermesh.__version__}")
