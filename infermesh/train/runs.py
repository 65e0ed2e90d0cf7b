"""Runs launched by ``infermesh-run`` on this machine, read back from their run directories.

Each launcher writes ``<run_dir>/<run_id>/<node>/summary.json`` when it exits (see
:mod:`infermesh.train.launcher.logs` for the layout). This module lists and loads them for
``infermesh runs ls`` and ``infermesh runs show``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infermesh.core.errors import UsageError

logger = logging.getLogger(__name__)

__all__ = ["RunSummary", "list_runs", "load_run", "node_dir_name"]


@dataclass
class RunSummary:
    """What one node's launcher recorded about a run."""

    run_id: str
    """Name of the run's directory (``--rdzv-id``, or generated for single-node runs)."""
    rdzv_id: str
    node: str
    status: str
    started: float
    ended: float
    attempts: int
    restarts: int
    """Restarts after failures or hangs (membership changes are not counted)."""
    local_world_size: int
    script: str
    path: Path
    failures: list[dict[str, Any]] = field(default_factory=list)
    root_cause: dict[str, Any] | None = None

    @property
    def duration(self) -> float:
        return self.ended - self.started

    def write(self) -> None:
        """Write ``self.path`` atomically."""
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path)

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        data = json.loads(path.read_text())
        return cls(
            run_id=data["run_id"],
            rdzv_id=data.get("rdzv_id", data["run_id"]),
            node=data["node"],
            status=data["status"],
            started=float(data["started"]),
            ended=float(data["ended"]),
            attempts=int(data["attempts"]),
            restarts=int(data["restarts"]),
            local_world_size=int(data["local_world_size"]),
            script=data["script"],
            path=path,
            failures=list(data.get("failures", [])),
            root_cause=data.get("root_cause"),
        )


def node_dir_name(node: str) -> str:
    """The directory name of a node inside a run directory (unsafe characters become _)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", node) or "node"


def list_runs(run_dir: str | Path) -> list[RunSummary]:
    """Every node summary under ``run_dir``, newest first; unreadable ones are skipped."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UsageError(f"run directory {str(root)!r} does not exist; pass --run-dir DIR")
    out: list[RunSummary] = []
    for path in root.glob("*/*/summary.json"):
        try:
            out.append(RunSummary.read(path))
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("skipping unreadable run summary %s: %s", path, e)
    return sorted(out, key=lambda r: r.started, reverse=True)


def load_run(run_dir: str | Path, run_id: str) -> list[RunSummary]:
    """The node summaries of one run; a unique prefix of the id is enough."""
    runs = list_runs(run_dir)
    ids = sorted({r.run_id for r in runs})
    matches = [i for i in ids if i == run_id] or [i for i in ids if i.startswith(run_id)]
    if len(matches) != 1:
        what = "matches several runs" if matches else "is not a run"
        known = ", ".join(matches or ids[:10]) or "none"
        raise UsageError(f"{run_id!r} {what} in {run_dir}; runs: {known}")
    return [r for r in runs if r.run_id == matches[0]]
