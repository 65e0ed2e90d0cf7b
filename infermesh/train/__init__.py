"""Training: the ``infermesh-run`` launcher, worker-side helpers, planners and hooks.

Worker-side API (cheap to import; does not start anything):

- :func:`heartbeat` -- call once per training step; ``infermesh-run --hang-timeout`` uses it
  to detect hung workers. A no-op when the script runs under plain ``torchrun`` or ``python``.
- :func:`prepare` -- make a ``DistributedDataParallel`` model mesh-aware: registers
  :class:`~infermesh.train.hooks.MeshHook`, which all-reduces gradients with the collective
  plan the ranks agree on (imported on first use, so importing this package stays torch-free).
- :func:`leave_process_group` -- the last call of a distributed job on every rank: frees
  what still holds the group, waits for the other ranks, destroys the group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infermesh.train.heartbeat import heartbeat

if TYPE_CHECKING:
    from infermesh.train.hooks import MeshHookConfig, prepare
    from infermesh.train.process_group import leave_process_group

__all__ = ["MeshHookConfig", "heartbeat", "leave_process_group", "prepare"]


def __getattr__(name: str) -> Any:
    if name in ("prepare", "MeshHookConfig"):
        from infermesh.train import hooks

        return getattr(hooks, name)
    if name == "leave_process_group":
        from infermesh.train.process_group import leave_process_group

        return leave_process_group
    raise AttributeError(f"module 'infermesh.train' has no attribute {name!r}")
