"""Shared process helpers of the control-plane benchmarks: pinned coordinator, CPU sampling.

The coordinator is started through the real CLI (``infermesh coordinator start --port 0``)
with the current interpreter, pinned to one core with ``taskset`` when the machine has one
to spare, and its address is read from the line it prints when it is ready.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
CLI = "import sys; from infermesh.cli.main import app; sys.argv[0] = 'infermesh'; app()"


def pin(core: int) -> list[str]:
    """``taskset -c CORE`` when there is taskset and more than one core, else nothing."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core)]
    return []


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


class CoordinatorProcess:
    """``infermesh coordinator start`` in a subprocess; use as a context manager."""

    def __init__(
        self,
        state_dir: Path,
        *,
        store: str = "",
        core: int | None = 0,
        suspect_after_s: float = 3.0,
        dead_after_s: float = 10.0,
        ready_timeout_s: float = 120.0,
        command: list[str] | None = None,
    ) -> None:
        """``command`` replaces the CLI (a peer server that prints the same ready line)."""
        cli = [
            "-c",
            CLI,
            "coordinator",
            "start",
            "--port",
            "0",
            "--state-dir",
            str(state_dir),
            "--suspect-after",
            str(suspect_after_s),
            "--dead-after",
            str(dead_after_s),
            "--log-level",
            "WARNING",
            *(["--store", store] if store else []),
        ]
        argv = [*(pin(core) if core is not None else []), sys.executable, *(command or cli)]
        self.argv = argv
        self.ready_timeout_s = ready_timeout_s
        self.address = ""
        self.ready_s = float("nan")
        self.output: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> CoordinatorProcess:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        reader = threading.Thread(target=self._read, args=(ready,), daemon=True)
        reader.start()
        if not ready.wait(self.ready_timeout_s) or not self.address:
            self.stop()
            raise RuntimeError(
                "the coordinator did not print its address within "
                f"{self.ready_timeout_s:.0f} s; its output:\n" + "".join(self.output[-30:])
            )
        self.ready_s = time.perf_counter() - t0
        return self

    def _read(self, ready: threading.Event) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if not self.address and " at " in line and "coordinator of cell" in line:
                self.address = line.split(" at ", 1)[1].split()[0]
                ready.set()
        ready.set()  # exited before it was ready

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the coordinator (the python process, not taskset)."""
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def rss_mib(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def __exit__(self, *exc: object) -> None:
        self.stop()
