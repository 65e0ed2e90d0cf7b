"""Leaving the default process group cleanly at the end of a job (gloo, torch 2.13)."""

from __future__ import annotations

import gc

import torch.distributed as dist

__all__ = ["leave_process_group"]


def leave_process_group() -> None:
    """End this worker's part in the default process group; call it on every rank, last.

    Three steps, each against a way a finished worker dies or hangs at exit:

    1. Collect garbage. A ``DistributedDataParallel`` model sits in reference cycles, so one
       the caller deleted still holds the group until the cyclic collector runs; if that
       happens after the group is destroyed (or at interpreter exit), its reducer joins
       gloo's thread while holding the GIL, which can deadlock, or gloo aborts the process
       ("terminate called without an active exception").
    2. Wait for every rank, so no rank tears down gloo pairs another one still uses.
    3. Destroy the group.

    Drop your references to the DDP model (and its :class:`~infermesh.train.hooks.MeshHook`)
    before calling it. A no-op when no group is initialised.
    """
    if not dist.is_initialized():
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
