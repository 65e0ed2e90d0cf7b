"""Real coordinator and agent processes on loopback for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from infermesh.client.coordinator import CoordinatorClient

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll ``predicate`` until it returns a truthy value; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Cell:
    """A coordinator process plus agent processes, all under ``root``."""

    def __init__(self, root: Path, *, store: str = "", dead_after: float = 6.0) -> None:
        self.root = root
        self.store = store
        self.dead_after = dead_after
        self.coordinator: subprocess.Popen[str] | None = None
        self.address = ""
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    def start_coordinator(self, port: int = 0) -> str:
        cmd = [
            str(BIN / "infermesh"),
            "coordinator",
            "start",
            "--port",
            str(port),
            "--state-dir",
            str(self.root / "coord"),
            "--dead-after",
            str(self.dead_after),
            "--log-level",
            "INFO",
        ]
        if self.store:
            cmd += ["--store", self.store]
        log = open(self.root / "coordinator.log", "a")  # noqa: SIM115
        self.coordinator = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.coordinator.stdout is not None
        line = self.coordinator.stdout.readline()
        match = re.search(r" at (\S+) ", line)
        assert match, f"coordinator did not start: {line!r}; see {self.root}/coordinator.log"
        self.address = match.group(1)
        return self.address

    def client(self) -> CoordinatorClient:
        return CoordinatorClient(self.address)

    def start_agent(self, node_id: str, slots: int = 1) -> subprocess.Popen[bytes]:
        log = open(self.root / f"agent-{node_id}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                str(BIN / "infermesh"),
                "agent",
                "start",
                "--coordinator",
                self.address,
                "--node-id",
                node_id,
                "--slots",
                str(slots),
                "--addr",
                "127.0.0.1",
                "--workdir",
                str(self.root / node_id),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.agents[node_id] = proc
        return proc

    def wait_nodes(self, n: int, timeout_s: float = 30.0) -> None:
        with self.client() as c:
            wait_for(
                lambda: sum(x.status == "ALIVE" for x in c.list_nodes()) >= n,
                timeout_s,
                f"{n} ALIVE nodes",
            )

    def kill_agent(self, node_id: str) -> None:
        proc = self.agents.pop(node_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def kill_coordinator(self) -> None:
        assert self.coordinator is not None
        self.coordinator.send_signal(signal.SIGKILL)
        self.coordinator.wait()
        self.coordinator = None

    def close(self) -> None:
        for proc in self.agents.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.agents.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.coordinator is not None:
            self.coordinator.send_signal(signal.SIGTERM)
            try:
                self.coordinator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.coordinator.kill()


def submit(cell: Cell, out: Path, *args: str) -> subprocess.Popen[str]:
    """``infermesh-run --coordinator ... examples/train_tiny_gpt.py`` with ``args``."""
    env = dict(os.environ, INFERMESH_COORDINATOR=cell.address)
    return subprocess.Popen(
        [str(BIN / "infermesh-run"), *args],
        cwd=ROOT,
        env=env,
        stdout=open(out, "w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
