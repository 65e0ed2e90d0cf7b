"""Helpers for launcher tests: run ``infermesh-run`` / ``torchrun`` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent / "scripts"
BIN = Path(sys.executable).parent


def launcher_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC_"))}
    env.pop("OMP_NUM_THREADS", None)
    env.update(extra)
    return env


def run(
    tool: str, *args: str, cwd: Path, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``tool`` (infermesh-run or torchrun) to completion; SIGTERM it on timeout."""
    proc = subprocess.Popen(
        [str(BIN / tool), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or launcher_env(),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"{tool} {' '.join(args)} did not finish in {timeout}s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def script(name: str) -> str:
    return str(SCRIPTS / name)


@pytest.fixture
def foreign_listener():
    """(pid, port) of another program (not a launcher) listening on a loopback port."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys;s=socket.socket();s.bind(('127.0.0.1',0));s.listen();"
            "print(s.getsockname()[1],flush=True);sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        yield holder.pid, int(holder.stdout.readline())
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
