"""The coordinator's collective plan, handed from the agent to its workers through a file.

The agent writes each plan the coordinator sends for a job to the file named by
``$INFERMESH_PLAN_FILE`` in the job's environment (atomically: write, then rename); rank 0's
MeshHook reads it at its agreement steps. A plan is state, not a stream: a worker that
starts later -- every elastic round starts new workers -- finds the current plan in the
file, where a message sent before it connected would be lost.

Format: one JSON object, the fields of :class:`CellPlan`. Torch-free (the agent imports it).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["PLAN_FILE_ENV", "CellPlan", "PlanFile", "write_plan"]

PLAN_FILE_ENV = "INFERMESH_PLAN_FILE"
"""Set by the agent for its workers: where the job's current collective plan is."""


@dataclass(frozen=True)
class CellPlan:
    """One version of the coordinator's collective plan for a job."""

    version: int
    algorithm: str
    compression: str
    fusion_bytes: int
    predicted_s: float = 0.0
    reason: str = ""

    def label(self) -> str:
        """``algorithm/compression/fusion_bytes``, as the hook logs plans."""
        return f"{self.algorithm}/{self.compression}/{self.fusion_bytes}"


def write_plan(path: Path, plan: CellPlan) -> None:
    """Replace the plan at ``path`` in one step (readers see the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(plan)))
    os.replace(tmp, path)


class PlanFile:
    """Reads the plan file when it changed; keeps the last good plan otherwise."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self.plan: CellPlan | None = None
        """The last plan read (None: no file yet)."""

    def read(self) -> CellPlan | None:
        """The current plan: re-read only when the file's modification time or size changed.

        A file that is not a plan is logged (once per version of the file) and skipped: the
        previous plan stays.
        """
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return self.plan
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return self.plan
        self._stamp = stamp
        try:
            doc = json.loads(self.path.read_text())
            self.plan = CellPlan(
                version=int(doc["version"]),
                algorithm=str(doc["algorithm"]),
                compression=str(doc["compression"]),
                fusion_bytes=int(doc["fusion_bytes"]),
                predicted_s=float(doc.get("predicted_s", 0.0)),
                reason=str(doc.get("reason", "")),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "%s is not a collective plan (%s); keeping the previous one", self.path, error
            )
        return self.plan
