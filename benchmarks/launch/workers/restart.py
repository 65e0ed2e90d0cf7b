"""Worker of metric (c): fail once on rank 1, then time the first step after the restart.

Attempt 0 (``TORCHELASTIC_RESTART_COUNT`` == ``"0"``): every rank trains; at step
``FAIL_STEP`` rank 1 writes ``time.time()`` to ``$BENCH_OUT_DIR/fail`` and calls
``os._exit(1)`` (no cleanup, like a crash). The other rank is then stuck in or fails its
next all-reduce until the launcher stops it.

Attempt 1: every rank writes the time its first step completed to
``$BENCH_OUT_DIR/restart_step.rank<R>``, takes a couple more steps and exits 0.
"""

from __future__ import annotations

import os

from _common import record, setup, train_step

from infermesh.train import leave_process_group

FAIL_STEP = 5
"""The step (1-based) at which rank 1 dies in attempt 0."""

STEPS = 8
"""Steps each attempt would take without a failure."""


def main() -> None:
    """Train ``STEPS`` steps; inject the failure or record the restart time."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    model, opt, rank = setup()
    for step in range(1, STEPS + 1):
        if attempt == "0" and rank == 1 and step == FAIL_STEP:
            record("fail")
            os._exit(1)
        train_step(model, opt)
        if attempt != "0" and step == 1:
            record(f"restart_step.rank{rank}")
    del model, opt  # before leaving the group: see leave_process_group's docstring
    leave_process_group()


if __name__ == "__main__":
    main()
