"""The InferMesh error hierarchy.

Every error a user can cause says what was wrong (quoting the bad value), what was expected
and how to fix it. Command-line entry points turn :class:`UsageError` into a one-line message
and exit code 2.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "InferMeshError",
    "LaunchError",
    "PermissionDenied",
    "PortInUse",
    "QuotaExceeded",
    "Unauthenticated",
    "UsageError",
    "WorkerFailed",
]


class InferMeshError(Exception):
    """Base class of every error InferMesh raises on purpose."""


class UsageError(InferMeshError, ValueError):
    """Bad user input: a flag, a config key or a path. Nothing was started."""


class PortInUse(UsageError):
    """A port the user named (or a fixed default) is taken by another program."""

    def __init__(self, port: int, flag: str, host: str = "", owner: str = "") -> None:
        where = f"{host}:{port}" if host else str(port)
        by = f" ({owner})" if owner else ""
        super().__init__(
            f"port {where} ({flag}) is already in use by another program{by}; "
            f"free it or pass another port with {flag}"
        )
        self.port = port
        self.flag = flag


class LaunchError(InferMeshError):
    """The launcher could not start or keep its workers running."""


class WorkerFailed(LaunchError):
    """A worker group failed for good (restarts exhausted); carries the root cause summary."""


class CheckpointError(InferMeshError):
    """A checkpoint is missing, unreadable or does not fit the job; the message names the path."""


class Unauthenticated(InferMeshError):
    """The caller presented no identity the cell accepts (no or bad certificate or token)."""


class PermissionDenied(InferMeshError):
    """The caller is known but its role (or ownership) does not allow the call."""


class QuotaExceeded(InferMeshError):
    """A tenant's job quota (concurrent jobs or slots) does not leave room for the job."""
