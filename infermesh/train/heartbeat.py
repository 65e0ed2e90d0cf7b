"""Worker-side progress heartbeat.

``infermesh-run`` gives every worker the environment variable ``INFERMESH_HEARTBEAT_FILE``:
a small file under the run directory that belongs to that worker. :func:`heartbeat` rewrites
it (step number and wall time) at most every ``_MIN_INTERVAL_S`` seconds, so calling it every
step costs a clock read. The launcher's agent reads the files' modification times; a worker
group whose slowest worker has not beaten for ``--hang-timeout`` seconds is treated as failed
and restarted.

Without the variable (plain ``torchrun``, ``python train.py``) :func:`heartbeat` does nothing.
"""

from __future__ import annotations

import atexit
import os
import time

__all__ = ["HEARTBEAT_ENV", "heartbeat"]

HEARTBEAT_ENV = "INFERMESH_HEARTBEAT_FILE"
_MIN_INTERVAL_S = 0.2


class _Beat:
    """Process-local state: the open file and the time of the last write."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.fd: int | None = None
        self.last = 0.0
        self.pending: int | None = None
        self.flush_registered = False

    def reset_if_moved(self) -> None:
        path = os.environ.get(HEARTBEAT_ENV) or None
        if path == self.path:
            return
        if self.fd is not None:
            os.close(self.fd)
        self.path, self.fd, self.last = path, None, 0.0
        if path:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)


_beat = _Beat()


def heartbeat(step: int | None = None) -> None:
    """Record that this worker made progress (call once per training step)."""
    _beat.reset_if_moved()
    if _beat.fd is None:
        return
    now = time.monotonic()
    if now - _beat.last < _MIN_INTERVAL_S:
        if not _beat.flush_registered:
            atexit.register(_flush)
            _beat.flush_registered = True
        _beat.pending = step
        return
    _beat.last = now
    _beat.pending = None
    _write(step)


def _write(step: int | None) -> None:
    assert _beat.fd is not None
    record = f"{-1 if step is None else step} {time.time():.3f}\n".encode()
    os.pwrite(_beat.fd, record.ljust(32), 0)


def _flush() -> None:
    """At exit: write the last step a throttled call skipped (the final step is not lost)."""
    if _beat.fd is not None and _beat.pending is not None:
        _write(_beat.pending)
        _beat.pending = None
