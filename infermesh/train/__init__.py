"""Training: the ``infermesh-run`` launcher, worker-side helpers, planners and hooks.

Worker-side API (cheap to import; does not start anything):

- :func:`heartbeat` -- call once per training step; ``infermesh-run --hang-timeout`` uses it
  to detect hung workers. A no-op when the script runs under plain ``torchrun`` or ``python``.
- :func:`prepare` -- make a ``DistributedDataParallel`` model mesh-aware: registers
  :class:`~infermesh.train.hooks.MeshHook`, which all-reduces gradients with the collective
  plan the ranks agree on (imported on first use, so importing this package stays torch-free).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infermesh.train.heartbeat import heartbeat

if TYPE_CHECKING:
    from infermesh.train.hooks import MeshHookConfig, prepare

__all__ = ["MeshHookConfig", "heartbeat", "prepare"]


def __getattr__(name: str) -> Any:
    if name in ("prepare", "MeshHookConfig"):
        from infermesh.train import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module 'infermesh.train' has no attribute {name!r}")
