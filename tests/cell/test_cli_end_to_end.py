"""End to end: ``infermesh up`` in a subprocess, then ``infermesh jobs ...`` as a user types them,
training the tiny GPT on two agents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infermesh.client.coordinator import COORDINATOR_ENV, CoordinatorClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INFERMESH = str(Path(sys.executable).with_name("infermesh"))
TINY = [
    "job=tiny_gpt",
    "--config-dir",
    str(ROOT / "configs"),
    "launch.nproc_per_node=1",
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "data.max_chars=100000",
    "data.batch_size=8",
    "trainer.log_every=5",
    "trainer.ckpt_every=5",
]
JOB_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def cell_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``infermesh up --agents 2``; yields (coordinator address, a working directory)."""
    work = tmp_path_factory.mktemp("e2e")
    ready = work / "ready"
    up = [INFERMESH, "up", "--agents", "2", "--port", "0", "--state-dir", str(work / "cell")]
    proc = subprocess.Popen(
        [*up, "--ready-file", str(ready)],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "infermesh up did not get ready in 60 s"
        time.sleep(0.05)
    try:
        yield ready.read_text().strip(), work
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cli(
    address: str, cwd: Path, *args: str, timeout: float = JOB_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, COORDINATOR_ENV: address}
    return subprocess.run(
        [INFERMESH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_submit_follows_training_until_it_succeeds(cell_up: tuple[str, Path]) -> None:
    address, work = cell_up
    r = cli(address, work, "jobs", "submit", *TINY, "trainer.max_steps=10", "trainer.out_dir=ok")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "infermesh: submitted tiny_gpt-" in r.stdout
    assert "tiny_gpt: 10 steps, world 2" in r.stdout
    assert " SUCCEEDED after " in r.stdout
    assert (work / "ok" / "checkpoints" / "step_00000010").exists()

    jobs = json.loads(cli(address, work, "jobs", "ls", "--json").stdout)["jobs"]
    done = jobs[0]
    assert done["status"] == "SUCCEEDED" and sorted(done["nodes"]) == ["node-0", "node-1"]
    logs = cli(address, work, "jobs", "logs", done["job_id"], "--tail", "2")
    assert logs.returncode == 0 and "succeeded on node-" in logs.stdout


def test_logs_follow_exits_with_the_failed_jobs_code(cell_up: tuple[str, Path]) -> None:
    address, work = cell_up
    r = cli(
        address,
        work,
        "jobs",
        "submit",
        *TINY,
        "trainer.max_steps=20",
        "trainer.fail_at_step=3",
        "launch.max_restarts=0",
        "trainer.out_dir=bad",
        "--detach",
    )
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[-1]
    follow = cli(address, work, "jobs", "logs", job_id, "-f")
    assert follow.returncode == 1, follow.stdout + follow.stderr
    assert f"infermesh: {job_id} FAILED after" in follow.stderr
    assert "RuntimeError" in follow.stdout
    shown = cli(address, work, "jobs", "show", job_id)
    assert shown.stdout.startswith(f"{job_id} FAILED")


def test_ctrl_c_stops_following_but_not_the_job(cell_up: tuple[str, Path]) -> None:
    address, work = cell_up
    r = cli(
        address,
        work,
        "jobs",
        "submit",
        *TINY,
        "trainer.max_steps=100000",
        "trainer.out_dir=long",
        "--detach",
    )
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[-1]
    env = {**os.environ, COORDINATOR_ENV: address}
    follower = subprocess.Popen(
        [INFERMESH, "jobs", "logs", job_id, "-f"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        deadline = time.monotonic() + JOB_TIMEOUT_S
        for line in follower.stdout:  # wait until training prints progress
            if "loss" in line or time.monotonic() > deadline:
                break
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 130
    assert f"stopped following {job_id}" in err
    with CoordinatorClient(address) as client:
        assert client.get_job(job_id).job.status == "RUNNING"
        cancelled = cli(address, work, "jobs", "cancel", job_id)
        assert cancelled.stdout.strip() == f"{job_id}: RUNNING -> CANCELLED"
        assert client.get_job(job_id).job.status == "CANCELLED"
