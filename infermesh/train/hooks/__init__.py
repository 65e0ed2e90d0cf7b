"""DDP communication hooks: :class:`MeshHook` carries out a collective plan (see mesh_hook)."""

from infermesh.train.hooks.mesh_hook import (
    CollectiveRecord,
    MeshHook,
    MeshHookConfig,
    emulation_notes,
    mesh_comm_hook,
    prepare,
)
from infermesh.train.hooks.stragglers import StragglerDetector, StragglerEvent

__all__ = [
    "CollectiveRecord",
    "MeshHook",
    "MeshHookConfig",
    "StragglerDetector",
    "StragglerEvent",
    "emulation_notes",
    "mesh_comm_hook",
    "prepare",
]
