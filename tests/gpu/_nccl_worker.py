"""One-GPU NCCL worker of ``test_nccl_groups.py``.

Usage: ``python -m tests.gpu._nccl_worker SCENARIO OUT``.

Runs in a process of its own so that NCCL_DEBUG (read once, when NCCL first logs) applies to
every communicator, and prints markers between the phases so that the test can tell which
communicator NCCL's lines belong to (NCCL flushes each debug line; so does this script):

1. a world of one rank on ``cuda:0`` (lazy, or bound with ``device_id`` for ``bound``), the
   default communicator created by one all-reduce -- then ``@@ default-ready``;
2. ``prepare`` of a DDP model: the per-algorithm groups -- then ``@@ hook-ready``;
3. six steps with the plans ring, ring, tree, tree, halving_doubling, halving_doubling,
   gradients compared with a DDP model under its default all-reduce -- then ``@@ done``.

Scenarios: ``lazy`` and ``bound`` (NCCL_ALGO unset), ``user_algo`` (the test sets
NCCL_ALGO=Tree for the process). The result goes to ``OUT`` as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from infermesh.train.hooks import MeshHookConfig, prepare
from infermesh.train.hooks.nccl_groups import NCCL_ALGO_ENV
from infermesh.train.planning import Algorithm, Compression, PlanChoice
from tests.topo._gloo_worker import max_grad_error

STEPS = 6
PLANS = [Algorithm.RING, Algorithm.TREE, Algorithm.HALVING_DOUBLING]


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 512), torch.nn.Tanh(), torch.nn.Linear(512, 4)
    ).cuda()


def _plan(step: int) -> PlanChoice:
    return PlanChoice(PLANS[(step // 2) % len(PLANS)], Compression.NONE, 1)


def _nccl_version() -> str:
    version = torch.cuda.nccl.version()
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _mark(name: str) -> None:
    torch.cuda.synchronize()
    print(f"@@ {name}", flush=True)


def main(scenario: str, out: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    bound = {"device_id": device} if scenario == "bound" else {}
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, **bound)
    try:
        dist.all_reduce(torch.ones(1, device=device))
        _mark("default-ready")
        ref = DistributedDataParallel(_mlp(), device_ids=[0], bucket_cap_mb=0.25)
        mesh = DistributedDataParallel(_mlp(), device_ids=[0], bucket_cap_mb=0.25)
        hook = prepare(mesh, MeshHookConfig(replan_every=2, job="gpu-test"), plan_provider=_plan)
        _mark("hook-ready")
        result: dict[str, Any] = {
            "env_after_groups": os.environ.get(NCCL_ALGO_ENV),
            "groups": sorted(a.value for a in hook.algorithm_groups),
            "notes": hook.emulation_notes(),
            "torch": torch.__version__,
            "nccl": _nccl_version(),
        }
        opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (ref, mesh)]
        gen = torch.Generator(device=device).manual_seed(7)
        errors = []
        for _ in range(STEPS):
            x = torch.randn(4, 16, device=device, generator=gen)
            y = torch.randn(4, 4, device=device, generator=gen)
            for model, opt in zip((ref, mesh), opts, strict=True):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
            errors.append(max_grad_error(ref, mesh))
            for opt in opts:
                opt.step()
        _mark("done")
        emulated: dict[str, list[bool]] = {}
        for r in hook.records:
            emulated.setdefault(r.algorithm, [])
            if r.emulated not in emulated[r.algorithm]:
                emulated[r.algorithm].append(r.emulated)
        result.update(
            errors=errors,
            plans=[[s, c.label()] for s, _, c in hook.plans],
            emulated=emulated,
            seconds=[r.seconds for r in hook.records],
            record_steps=sorted({r.step for r in hook.records}),
            env_after=os.environ.get(NCCL_ALGO_ENV),
        )
    finally:
        dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
