"""Worker of metric (a): record the wall-clock time right after the first training step.

Writes ``time.time()`` to ``$BENCH_OUT_DIR/first_step.rank<R>`` once the first DDP
forward/backward/optimizer step is done, then leaves the process group and exits 0.
"""

from __future__ import annotations

from _common import record, setup, train_step

from infermesh.train import leave_process_group


def main() -> None:
    """Init gloo, build the model, take one step, record its end time."""
    model, opt, rank = setup()
    train_step(model, opt)
    record(f"first_step.rank{rank}")
    del model, opt  # before leaving the group: see leave_process_group's docstring
    leave_process_group()


if __name__ == "__main__":
    main()
