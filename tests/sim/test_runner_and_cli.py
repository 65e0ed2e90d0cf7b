"""End to end: same seed gives byte-identical files; the CLI's errors and exit codes.

The commands are invoked through their typer group (``infermesh sim`` is this group
registered on the top-level app), so these tests need no other command group.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from infermesh.cli.sim import sim_app
from sim.config import dump, to_dict
from sim.runner import run_scenario
from sim.testing import tiny_config

runner = CliRunner()


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "runtime.json"
    }


def test_same_seed_gives_byte_identical_results(tmp_path: Path) -> None:
    cfg = tiny_config()
    names = ["mesh_hedge", "ml_enhanced_mesh"]
    run_scenario(cfg, tmp_path / "a", names, "both", jobs=2, show_progress=False)
    run_scenario(cfg, tmp_path / "b", names, "both", jobs=1, show_progress=False)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) >= {"config.yaml", "comparison.csv", "comparison.json", "mesh_hedge/metrics.csv"}
    assert a == b


def test_a_different_seed_changes_the_results(tmp_path: Path) -> None:
    from sim.runner import run_one

    cfg = tiny_config()
    other = tiny_config(seed=4)
    row_a, _ = run_one(cfg, "power_of_two", tmp_path / "a", "csv")
    row_b, _ = run_one(other, "power_of_two", tmp_path / "b", "csv")
    assert row_a != row_b


def test_generate_validate_and_report_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "small.yaml"
    r = runner.invoke(sim_app, ["generate", "--example-type", "small", "--output", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(sim_app, ["validate", "--config", str(out)])
    assert r.exit_code == 0 and "valid" in r.output


def test_run_and_report_write_the_documented_files(tmp_path: Path) -> None:
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(dump(tiny_config()))
    res = tmp_path / "res"
    r = runner.invoke(
        sim_app,
        [
            "run",
            "-c",
            str(cfg_path),
            "-s",
            "power_of_two",
            "-o",
            str(res),
            "--format",
            "csv",
            "-j",
            "1",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    for name in (
        "config.yaml",
        "comparison.csv",
        "power_of_two/metrics.csv",
        "power_of_two/timeseries.csv",
    ):
        assert (res / name).exists(), name
    assert not (res / "comparison.json").exists()
    r = runner.invoke(sim_app, ["report", str(res), "--no-plots"])
    assert r.exit_code == 0, r.output
    assert (res / "report" / "report.html").read_text().count("<tr>") == 2


def test_validate_prints_one_line_per_problem_and_exits_2(tmp_path: Path) -> None:
    data = to_dict(tiny_config())
    data["duration_s"] = -1
    data["fleet"]["mix"] = {"H100": "lots"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(dump(data))
    r = runner.invoke(sim_app, ["validate", "--config", str(bad)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert lines == [
        "error: duration_s: value -1 is not allowed; allowed: a number > 0",
        "error: fleet.mix.H100: value 'lots' is not allowed; allowed: a number >= 0",
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["generate", "--example-type", "huge", "-o", "x.yaml"],
            "--example-type: value 'huge' is not allowed; allowed: small, medium, large, xlarge",
        ),
        (["run", "-c", "missing.yaml"], "--config: value 'missing.yaml' cannot be read"),
        (
            ["run", "-c", "x.yaml", "-s", "hybird"],
            "--strategy: value 'hybird' is not allowed; allowed: adaptive_mesh",
        ),
        (
            ["run", "-c", "x.yaml", "-s", "ab:mesh:nope"],
            "--strategy: value 'ab:mesh:nope' names unknown strategy 'nope'; allowed: ",
        ),
        (
            ["run", "-c", "x.yaml", "-s", "ab:mesh:random:2"],
            "--strategy: A/B spec 'ab:mesh:random:2': split 2 is out of range",
        ),
        (
            ["run", "-c", "x.yaml", "--format", "xml"],
            "--format: value 'xml' is not allowed; allowed: csv, json, both",
        ),
        (
            ["report", "nowhere"],
            "results: value 'nowhere' has no comparison.csv or comparison.json",
        ),
    ],
)
def test_bad_input_names_the_flag_and_exits_2(
    args: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(sim_app, [*args])
    assert r.exit_code == 2
    assert r.output.startswith(f"error: {expected}")
