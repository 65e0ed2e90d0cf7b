"""``infermesh runs ls | show`` over run directories written by the launcher's RunSummary."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from infermesh.cli.main import app
from infermesh.train.runs import RunSummary, list_runs

runner = CliRunner()


def _write(root: Path, run_id: str, status: str, started: float, failures=()) -> None:
    node_dir = root / run_id / "node0"
    node_dir.mkdir(parents=True)
    RunSummary(
        run_id=run_id,
        rdzv_id=run_id,
        node="node0",
        status=status,
        started=started,
        ended=started + 12.5,
        attempts=len(failures) + 1,
        restarts=len(failures),
        local_world_size=2,
        script="train.py",
        path=node_dir / "summary.json",
        failures=list(failures),
        root_cause=(failures[-1] | {"traceback": "Traceback ...\nValueError: x"})
        if failures
        else None,
    ).write()


FAILURE = {
    "attempt": 0,
    "rank": 1,
    "local_rank": 1,
    "reason": "exit code 1",
    "message": "ValueError: x",
}


def test_runs_are_listed_newest_first(tmp_path: Path):
    _write(tmp_path, "old-run", "succeeded", 1000.0)
    _write(tmp_path, "new-run", "failed", 2000.0, [FAILURE])
    assert [r.run_id for r in list_runs(tmp_path)] == ["new-run", "old-run"]
    result = runner.invoke(app, ["runs", "ls", "--run-dir", str(tmp_path)])
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if "-run" in line]
    assert lines[0].split()[:3] == ["new-run", "node0", "failed"]
    assert lines[1].split()[:3] == ["old-run", "node0", "succeeded"]


def test_show_prints_failures_and_the_root_cause_by_id_prefix(tmp_path: Path):
    _write(tmp_path, "train-20261127-a1", "failed", 2000.0, [FAILURE])
    result = runner.invoke(app, ["runs", "show", "train-2026", "--run-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "train-20261127-a1 on node0: failed, 2 worker(s), 2 attempt(s), 12.5s" in result.output
    assert "attempt 0: rank 1 (local 1) exit code 1: ValueError: x" in result.output
    assert "    ValueError: x" in result.output


def test_an_unknown_run_or_missing_directory_is_a_one_line_error(tmp_path: Path):
    _write(tmp_path, "only-run", "succeeded", 1.0)
    result = runner.invoke(app, ["runs", "show", "nope", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "'nope' is not a run" in result.output and "only-run" in result.output
    result = runner.invoke(app, ["runs", "ls", "--run-dir", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "does not exist; pass --run-dir DIR" in result.output


def test_an_unreadable_summary_is_skipped_not_fatal(tmp_path: Path):
    _write(tmp_path, "good", "succeeded", 1.0)
    bad = tmp_path / "bad" / "node0"
    bad.mkdir(parents=True)
    (bad / "summary.json").write_text("{not json")
    assert [r.run_id for r in list_runs(tmp_path)] == ["good"]
