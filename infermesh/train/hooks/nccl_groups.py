"""One NCCL communicator per NCCL algorithm a collective plan can ask for.

NCCL has no per-call algorithm argument, but it reads ``NCCL_ALGO`` with ``getenv`` while it
initialises each communicator (its tuning model, ``ncclTopoTuneModel``, runs in every
communicator's init, ``ncclCommSplit`` included), and from then on that communicator only
chooses among the algorithms it enabled. So a process group whose communicator is created
while ``NCCL_ALGO=Ring`` runs its all-reduces as rings, one created under ``NCCL_ALGO=Tree``
as trees, and the default group keeps NCCL's own choice.

The catch is *when* the communicator exists. torch creates NCCL communicators lazily, at a
group's first collective, unless the group is bound to a device: after
``init_process_group(device_id=...)`` a ``new_group`` initialises at once (recent torch splits
the default communicator, ``ncclCommSplit``), and ``new_group(device_id=...)`` (torch 2.6+;
detected from its signature, not from the version) does it for one group.
:func:`build_algorithm_groups` therefore creates each group inside :func:`scoped_env` and,
whichever path torch took, runs one small all-reduce on it and waits for the device before
the scope ends: the communicator is complete (also under ``TORCH_NCCL_USE_COMM_NONBLOCKING``,
where NCCL initialises in a thread of its own) while ``NCCL_ALGO`` still has the group's
value.

Only ring and tree have an NCCL equivalent (:data:`NCCL_ALGO`); halving-doubling does not, so
it runs on the default communicator and is recorded as emulated.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from infermesh.train.planning import Algorithm

__all__ = ["NCCL_ALGO", "NCCL_ALGO_ENV", "build_algorithm_groups", "nccl_algo", "scoped_env"]

NCCL_ALGO_ENV = "NCCL_ALGO"
NCCL_ALGO: dict[Algorithm, str] = {Algorithm.RING: "Ring", Algorithm.TREE: "Tree"}
"""The ``NCCL_ALGO`` value of each plan algorithm that NCCL implements, in creation order."""

_NEW_GROUP_TAKES_DEVICE = "device_id" in inspect.signature(dist.new_group).parameters


def nccl_algo(algorithm: Algorithm) -> str | None:
    """The ``NCCL_ALGO`` value that makes NCCL run ``algorithm``; None if NCCL has none."""
    return NCCL_ALGO.get(algorithm)


@contextmanager
def scoped_env(name: str, value: str) -> Iterator[None]:
    """Set the environment variable ``name`` to ``value`` for the ``with`` block.

    On exit -- an exception included -- the variable has its previous value again, or is
    unset again if it was unset. ``os.environ`` calls ``putenv``/``unsetenv``, so code that
    reads the C environment (NCCL's ``getenv``) sees the same values.
    """
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def build_algorithm_groups(
    algorithms: Iterable[Algorithm], device: torch.device
) -> dict[Algorithm, dist.ProcessGroup]:
    """Create one initialised NCCL group over all ranks per algorithm NCCL implements.

    A collective call: every rank of the default group must call it with the same
    ``algorithms``; the groups are created in :data:`NCCL_ALGO`'s order. ``device`` is this
    rank's GPU (the one its gradients are on). Algorithms without an NCCL equivalent get no
    group.
    """
    wanted = set(algorithms)
    groups: dict[Algorithm, dist.ProcessGroup] = {}
    for algorithm, value in NCCL_ALGO.items():
        if algorithm in wanted:
            with scoped_env(NCCL_ALGO_ENV, value):
                groups[algorithm] = _initialised_group(device)
    return groups


def _initialised_group(device: torch.device) -> dist.ProcessGroup:
    """A new NCCL group over all ranks whose communicator on ``device`` exists on return."""
    kwargs: dict[str, Any] = {}
    bound = getattr(dist.distributed_c10d._get_default_group(), "bound_device_id", None)
    if _NEW_GROUP_TAKES_DEVICE and bound is None:
        kwargs["device_id"] = device  # eager init; a bound default group implies it
    group = dist.new_group(backend="nccl", **kwargs)
    # Lazy torch versions create the communicator here; eager ones may still be finishing it.
    probe = torch.zeros(1, device=device)
    dist.all_reduce(probe, group=group)
    torch.cuda.synchronize(device)
    return group
