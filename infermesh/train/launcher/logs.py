"""Where worker output goes, and how a failure is told to the user.

Layout of a run directory (``--run-dir``, default ``runs``)::

    runs/<run_id>/<node>/summary.json                     what happened, written at exit
    runs/<run_id>/<node>/attempt_<k>/rank_<r>/stdout.log  per global rank r, attempt k
    runs/<run_id>/<node>/attempt_<k>/rank_<r>/stderr.log
    runs/<run_id>/<node>/attempt_<k>/rank_<r>/error.json  the uncaught exception, if any
    runs/<run_id>/<node>/attempt_<k>/rank_<r>/heartbeat   last progress heartbeat

Console lines from workers carry ``[<node> r<global rank> l<local rank>]``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from torch.distributed.elastic.multiprocessing import LogsDest, LogsSpecs, Std
from torch.distributed.elastic.multiprocessing.api import to_map

logger = logging.getLogger(__name__)

__all__ = ["FailureRecord", "RunDirLogsSpecs", "describe_exit", "first_traceback", "prefix"]


def prefix(node: str) -> str:
    """Template (torch elastic syntax) of the prefix put before every console line."""
    return f"[{node} r${{rank}} l${{local_rank}}]: "


class RunDirLogsSpecs(LogsSpecs):
    """Per-rank log files under ``<root>/<node>/attempt_<k>/rank_<r>/``."""

    def __init__(
        self,
        node_dir: Path,
        redirects: Std | dict[int, Std],
        tee: Std | dict[int, Std],
        local_ranks_filter: set[int] | None = None,
    ) -> None:
        super().__init__(str(node_dir), redirects, tee, local_ranks_filter)
        self.node_dir = node_dir

    @property
    def root_log_dir(self) -> str:
        return str(self.node_dir)

    def attempt_dir(self, attempt: int | str) -> Path:
        return self.node_dir / f"attempt_{attempt}"

    def reify(self, envs: dict[int, dict[str, str]]) -> LogsDest:
        n = len(envs)
        attempt = envs[0].get("TORCHELASTIC_RESTART_COUNT", "0") if n else "0"
        adir = self.attempt_dir(attempt)
        shutil.rmtree(adir, ignore_errors=True)
        redirs, tees = to_map(self._redirects, n), to_map(self._tee, n)
        dest = LogsDest()
        for lr in range(n):
            wdir = adir / f"rank_{envs[lr].get('RANK', lr)}"
            wdir.mkdir(parents=True, exist_ok=True)
            rd, tee = redirs[lr] | tees[lr], tees[lr]
            dest.stdouts[lr] = str(wdir / "stdout.log") if rd & Std.OUT else ""
            dest.stderrs[lr] = str(wdir / "stderr.log") if rd & Std.ERR else ""
            hidden = self._local_ranks_filter is not None and lr not in self._local_ranks_filter
            if tee & Std.OUT and not hidden:
                dest.tee_stdouts[lr] = dest.stdouts[lr]
            if tee & Std.ERR and not hidden:
                dest.tee_stderrs[lr] = dest.stderrs[lr]
            if hidden:
                dest.stdouts[lr] = dest.stdouts[lr] or os.devnull
                dest.stderrs[lr] = dest.stderrs[lr] or os.devnull
            dest.error_files[lr] = str(wdir / "error.json")
            envs[lr]["TORCHELASTIC_ERROR_FILE"] = dest.error_files[lr]
        dest.filtered_stdout = str(adir / "filtered_stdout.log")
        dest.filtered_stderr = str(adir / "filtered_stderr.log")
        return dest


@dataclass
class FailureRecord:
    """One worker failure, as shown to the user and kept in ``summary.json``."""

    attempt: int
    rank: int
    local_rank: int
    node: str
    pid: int
    exitcode: int
    reason: str
    """``exit code 1``, ``killed by SIGKILL`` or ``hung: ...``."""
    message: str
    """First line of the root cause (exception type and message), if known."""
    traceback: str
    time: float
    log_dir: str

    def headline(self) -> str:
        what = f": {self.message}" if self.message else ""
        return (
            f"rank {self.rank} (local {self.local_rank}) on node {self.node} {self.reason} "
            f"in attempt {self.attempt}{what}"
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def describe_exit(exitcode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL`` from a Popen-style return code."""
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


_TB_START = "Traceback (most recent call last):"


def first_traceback(error_file: str, stderr_file: str) -> tuple[str, str]:
    """(message, traceback) of a worker's failure: its error file, else its stderr log."""
    try:
        with open(error_file) as f:
            data = json.load(f)
        msg = data["message"]
        if isinstance(msg, str):
            return msg.splitlines()[0] if msg else "", msg
        return msg.get("message", ""), msg.get("extraInfo", {}).get("py_callstack", "")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        text = Path(stderr_file).read_text(errors="replace") if stderr_file else ""
    except OSError:
        return "", ""
    # torch.distributed prefixes a worker's uncaught-exception lines with "[rank1]: "
    text = re.sub(r"(?m)^\[rank\d+\]: ?", "", text)
    start = text.find(_TB_START)
    if start < 0:
        return "", ""
    lines = text[start:].splitlines()
    tb = [lines[0]]
    for line in lines[1:]:
        tb.append(line)
        if line and not line.startswith((" ", "\t")) and line != _TB_START:
            break  # the exception line closes the first traceback
    message = tb[-1] if len(tb) > 1 else ""
    return message, "\n".join(tb)
