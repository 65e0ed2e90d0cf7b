"""``infermesh topo plan`` as a user types it, and the worker API's import cost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from infermesh.cli.main import app
from infermesh.core.errors import UsageError
from infermesh.train.hooks import prepare

SHAPE = ["topo", "plan", "--nodes", "4", "--gpus-per-node", "8"]


def test_topo_plan_prints_every_alternative_and_the_chosen_plan() -> None:
    result = CliRunner().invoke(
        app, [*SHAPE, "--link-profile", "h100-nvlink-400g", "--bytes", "100MB"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "4 node(s) x 8 rank(s), 100MB" in lines[0]
    # NCCL applies ring, tree and the two two-level algorithms: 4 x 2 fusion windows
    assert sum("ms" in line for line in lines[2:-1]) == 8
    assert not any("halving_doubling" in line for line in lines)
    assert sum("<- chosen" in line for line in lines) == 1
    assert lines[-1].startswith("chosen: tree, compression none")


def test_topo_plan_prices_halving_doubling_only_when_named() -> None:
    result = CliRunner().invoke(
        app,
        [*SHAPE, "--bytes", "100MB", "--algorithm", "ring,halving_doubling", "--json"],
    )
    assert result.exit_code == 0, result.output
    priced = {alt["choice"]["algorithm"] for alt in json.loads(result.output)["alternatives"]}
    assert priced == {"ring", "halving_doubling"}


def test_topo_plan_prints_json_on_request() -> None:
    result = CliRunner().invoke(app, [*SHAPE, "--bytes", "1GiB", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["choice"]["algorithm"] == "ring"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bytes", "10XB"], "bad byte size '10XB'; use a number"),
        (["--bytes", "1MB", "--link-profile", "h200"], "unknown link profile 'h200'; known: "),
        (["--bytes", "1MB", "--algorithm", "rnig"], "unknown algorithm 'rnig'; known: ring"),
        (["--bytes", "1MB", "--compression", "fp8"], "unknown compression 'fp8'; known: none"),
    ],
)
def test_topo_plan_rejects_bad_input_in_one_line_with_exit_code_2(
    args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, [*SHAPE, *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"infermesh topo plan: error: {message}")


def test_prepare_refuses_a_model_that_is_not_ddp() -> None:
    import torch

    with pytest.raises(UsageError, match="needs a DistributedDataParallel model, got Linear"):
        prepare(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_importing_the_worker_api_does_not_import_torch() -> None:
    code = "import sys, infermesh.train; assert 'torch' not in sys.modules; infermesh.train.prepare"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_planner_is_pure_and_imports_neither_torch_nor_other_subsystems() -> None:
    code = (
        "import sys, infermesh.train.planning, infermesh.cli.topo\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('infermesh.obs', "
        "'infermesh.train.hooks', 'infermesh.train.launcher'))]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_topo_plan_fits_measured_bandwidths_like_the_hook_and_prices_gloo() -> None:
    from infermesh.cli.topo import plan_text

    args = (2, 2, "veth-1g", "3MiB")
    profile = json.loads(plan_text(*args, as_json=True, backend="gloo"))
    assert profile["choice"]["algorithm"] == "hierarchical"  # the profile's loopback is fast
    slow = plan_text(*args, as_json=True, measured={"intra": 50e6}, backend="gloo")
    assert json.loads(slow)["choice"]["algorithm"] == "ring"


def test_topo_plan_rejects_an_unknown_backend() -> None:
    result = CliRunner().invoke(app, [*SHAPE, "--bytes", "1MB", "--backend", "mpi"])
    assert result.exit_code == 2
    assert "unknown backend 'mpi'; known: nccl, gloo" in result.stderr
