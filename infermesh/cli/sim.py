"""``infermesh sim``: generate, validate, run and report simulator scenarios.

Thin commands over :mod:`sim.scenarios`, :mod:`sim.config`, :mod:`sim.runner` and
:mod:`sim.report`; bad input prints one line per problem (key, value, what is allowed)
and exits with code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from infermesh.core.errors import UsageError

__all__ = ["sim_app"]

log = logging.getLogger(__name__)

sim_app = typer.Typer(
    name="sim",
    help="Discrete-event simulator: compare routing strategies before deploying them.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(exc: UsageError) -> NoReturn:
    for line in str(exc).splitlines():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


@sim_app.command()
def generate(
    example_type: Annotated[
        str, typer.Option("--example-type", help="small | medium | large | xlarge")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="YAML file to write")],
) -> None:
    """Write an example scenario config."""
    from sim.scenarios import EXAMPLES, example_yaml

    if example_type not in EXAMPLES:
        _fail(
            UsageError(
                f"--example-type: value {example_type!r} is not allowed; "
                f"allowed: {', '.join(EXAMPLES)}"
            )
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(example_yaml(example_type))
    typer.echo(f"wrote {output}")


@sim_app.command()
def validate(
    config: Annotated[Path, typer.Option("--config", "-c", help="scenario YAML")],
) -> None:
    """Check a scenario config; every problem names the key, the value and what is allowed."""
    from sim.config import load

    try:
        cfg = load(config)
    except UsageError as exc:
        _fail(exc)
    n = cfg.fleet.cells * cfg.fleet.nodes_per_cell
    typer.echo(f"{config}: valid ({cfg.name}: {n:,} nodes, {cfg.duration_s:g} s)")


@sim_app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="scenario YAML")],
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            "-s",
            help="strategy or A/B split ab:A:B[:SPLIT] (repeat; default: config's or all)",
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="results directory")] = Path(
        "results"
    ),
    fmt: Annotated[str, typer.Option("--format", help="csv | json | both")] = "both",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="processes (0 = one per CPU)")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bars")] = False,
) -> None:
    """Run strategies on a scenario in parallel processes and write the results."""
    from sim.config import load, strategy_problems
    from sim.report import TABLE_COLUMNS
    from sim.runner import FORMATS, run_scenario

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if fmt not in FORMATS:
            raise UsageError(
                f"--format: value {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}"
            )
        if jobs < 0:
            raise UsageError(f"--jobs: value {jobs} is not allowed; allowed: an integer >= 0")
        problems = [p for s in strategy or [] for p in strategy_problems(s, "--strategy")]
        if problems:
            raise UsageError("\n".join(problems))
        cfg = load(config)
    except UsageError as exc:
        _fail(exc)
    progress = not no_progress and sys.stderr.isatty()
    rows = run_scenario(cfg, output, strategy or None, fmt, jobs or None, progress)
    _print_table(rows, TABLE_COLUMNS)
    typer.echo(f"results in {output}/")


@sim_app.command()
def report(
    results: Annotated[Path, typer.Argument(help="directory written by 'sim run'")],
    no_plots: Annotated[bool, typer.Option("--no-plots", help="table and HTML only")] = False,
) -> None:
    """Print the comparison table and write PNG plots and an HTML page."""
    from sim.report import TABLE_COLUMNS, build_report

    try:
        rows, out = build_report(results, plots=not no_plots)
    except UsageError as exc:
        _fail(exc)
    _print_table(rows, TABLE_COLUMNS)
    typer.echo(f"report in {out}/ (report.html)")


def _print_table(rows: list[dict[str, object]], columns: tuple[tuple[str, str], ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    from sim.report import fmt_cell

    table = Table(title="strategy comparison")
    for _, title in columns:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(*(fmt_cell(r.get(k)) for k, _ in columns))
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
