"""The example job under plain ``torchrun``: trains, checkpoints, resumes, restarts, rejects."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infermesh.train.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "train_tiny_gpt.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "data.batch_size=8",
    "data.max_chars=200000",
    "trainer.log_every=5",
    "trainer.ckpt_every=10",
]
SUMMARY = re.compile(
    r"^tiny_gpt: (\d+) steps(?: \(resumed at (\d+)\))?, world (\d+), "
    r"loss ([\d.]+) -> ([\d.]+), [\d.]+k tok/s, checkpoint (\S+)$",
    re.MULTILINE,
)


def torchrun(
    out_dir: Path, *overrides: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the example under ``torchrun --standalone --nproc-per-node 2``; capture its output."""
    args = [
        str(TORCHRUN),
        "--standalone",
        "--nproc-per-node",
        "2",
        *extra,
        str(SCRIPT),
        *TINY,
        f"trainer.out_dir={out_dir}",
        *overrides,
    ]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base | (env or {})
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its workers on SIGTERM; SIGKILL would orphan them
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"torchrun did not finish in 60 s; stderr tail:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_example_trains_under_torchrun_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    first = torchrun(tmp_path, "trainer.max_steps=20")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = SUMMARY.search(first.stdout)
    assert summary, first.stdout
    steps, resumed, world, loss_before, loss_after, ckpt = summary.groups()
    assert (steps, resumed, world) == ("20", None, "2")
    assert float(loss_after) < float(loss_before)
    assert Path(ckpt) == tmp_path / "checkpoints" / "step_00000020"
    assert latest_checkpoint(tmp_path / "checkpoints") == Path(ckpt)
    saved = load_checkpoint(ckpt)
    assert (saved["step"], saved["data_position"], saved["world_size"]) == (20, 20 * 2 * 8, 2)
    assert len(SUMMARY.findall(first.stdout)) == 1  # rank 0 only

    second = torchrun(tmp_path, "trainer.max_steps=30")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from {ckpt} at step 20" in second.stderr
    assert "step 5/30" not in second.stderr  # it did not start again at 0
    summary = SUMMARY.search(second.stdout)
    assert summary, second.stdout
    assert summary.group(1, 2) == ("30", "20")
    assert load_checkpoint(summary.group(6))["data_position"] == 30 * 2 * 8


def test_an_injected_failure_is_restarted_by_torchrun_and_resumes(tmp_path: Path) -> None:
    result = torchrun(
        tmp_path,
        "trainer.max_steps=15",
        "trainer.fail_at_step=13",
        "trainer.fail_rank=1",
        extra=("--max-restarts", "1"),
        # A known torch elastic pitfall: restarted workers can read the previous
        # round's TCPStore keys and gloo gets "Connection refused" unless the store is fresh.
        env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RuntimeError: injected failure at step 13" in result.stderr
    assert "resumed from" in result.stderr and "at step 10" in result.stderr
    summary = SUMMARY.search(result.stdout)
    assert summary, result.stdout
    assert summary.group(1, 2) == ("15", "10")


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("trainer.max_stepz=5", "unknown config key 'trainer.max_stepz'"),
        ("trainer.max_steps=ten", "trainer.max_steps must be an integer, got 'ten'"),
    ],
)
def test_a_bad_override_exits_2_with_a_one_line_error(
    tmp_path: Path, override: str, words: str
) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), f"trainer.out_dir={tmp_path}", override],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("train_tiny_gpt: error: ")
    assert words in lines[0]
    assert not (tmp_path / "checkpoints").exists()
