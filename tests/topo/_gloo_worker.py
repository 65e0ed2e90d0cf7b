"""Worker of the multi-process gloo checks: every plan against DDP's default all-reduce.

Each of the ``world`` processes runs every scenario: two copies of one small MLP with the
same initial weights, one under DDP's default hook and one under :class:`MeshHook` with a
fixed plan (or a schedule of plans), fed the same rank-specific batches. After every backward
it compares the two models' gradients; each rank writes what it saw to ``<out>/rank<r>.json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from infermesh.signal.collective import IPC_ENV
from infermesh.train import leave_process_group
from infermesh.train.hooks import MeshHookConfig, mesh_hook, prepare
from infermesh.train.hooks.mesh_hook import PLAN_ENV
from infermesh.train.plan_file import PLAN_FILE_ENV, CellPlan, write_plan
from infermesh.train.planning import Algorithm, Compression, PlanChoice

A, C = Algorithm, Compression
KB = 1024
BUCKET_MB = 0.25
STEPS = 6


def max_grad_error(ref: torch.nn.Module, mesh: torch.nn.Module) -> float:
    """The largest gradient difference between two models, relative to each tensor's scale."""
    worst = 0.0
    for p_ref, p_mesh in zip(ref.parameters(), mesh.parameters(), strict=True):
        assert p_ref.grad is not None and p_mesh.grad is not None
        scale = float(p_ref.grad.abs().max()) or 1.0
        worst = max(worst, float((p_ref.grad - p_mesh.grad).abs().max()) / scale)
    return worst


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 512),
        torch.nn.Tanh(),
        torch.nn.Linear(512, 512),
        torch.nn.Tanh(),
        torch.nn.Linear(512, 4),
    )


def _fixed(choice: PlanChoice) -> Any:
    return lambda step: choice


def _cycle(choices: list[PlanChoice], every: int) -> Any:
    return lambda step: choices[(step // every) % len(choices)]


SCENARIOS: dict[str, tuple[Any, dict[str, Any], int]] = {
    # name: (plan provider, MeshHookConfig overrides, steps)
    "ring": (_fixed(PlanChoice(A.RING, C.NONE, 1)), {}, STEPS),
    "ring_fused_all": (_fixed(PlanChoice(A.RING, C.NONE, 64 * 2**20)), {}, STEPS),
    "tree_emulated": (_fixed(PlanChoice(A.TREE, C.NONE, 1)), {}, STEPS),
    "hierarchical": (_fixed(PlanChoice(A.HIERARCHICAL, C.NONE, 1)), {}, STEPS),
    "hierarchical_fused": (_fixed(PlanChoice(A.HIERARCHICAL, C.NONE, 64 * 2**20)), {}, STEPS),
    "hierarchical_leader": (_fixed(PlanChoice(A.HIERARCHICAL_LEADER, C.NONE, 1)), {}, STEPS),
    "ring_fp16": (_fixed(PlanChoice(A.RING, C.FP16, 1)), {}, STEPS),
    "hierarchical_bf16": (_fixed(PlanChoice(A.HIERARCHICAL, C.BF16, 700 * KB)), {}, STEPS),
    "powersgd": (_fixed(PlanChoice(A.RING, C.POWERSGD, 1)), {"powersgd_rank": 8}, STEPS),
    "switching": (
        _cycle(
            [
                PlanChoice(A.RING, C.NONE, 1),
                PlanChoice(A.HIERARCHICAL, C.NONE, 64 * 2**20),
                PlanChoice(A.HIERARCHICAL_LEADER, C.NONE, 700 * KB),
                PlanChoice(A.RING, C.FP16, 700 * KB),
            ],
            2,
        ),
        {"replan_every": 2},
        10,
    ),
    "planner": (None, {"replan_every": 3}, STEPS),
    "env_plan": (None, {}, 2),
    "cell_plan": (None, {"replan_every": 2}, 10),
    "straggler": (
        _fixed(PlanChoice(A.RING, C.NONE, 1)),
        {"replan_every": 2, "straggler_windows": 2, "straggler_factor": 1.5},
        10,
    ),
}
SLOW_RANK, SLOW_S = 2, 0.08


def _busy(seconds: float) -> None:
    """Compute (not sleep) for ``seconds``: a slow rank, as a slower GPU would be."""
    end = time.perf_counter() + seconds
    a = torch.ones(64, 64)
    while time.perf_counter() < end:
        a = torch.tanh(a @ a)


# the coordinator's plans of "cell_plan", written to rank 0's plan file before these steps
CELL_PLANS = {
    0: CellPlan(1, "hierarchical", "none", 700 * KB, reason="test"),
    3: CellPlan(2, "ring", "none", 1, reason="test"),
    6: CellPlan(3, "tree", "none", 1, reason="tree is not applied on gloo"),
}


def _scenario(name: str, rank: int, world: int) -> dict[str, Any]:
    provider, overrides, steps = SCENARIOS[name]
    ref = DistributedDataParallel(_mlp(), bucket_cap_mb=BUCKET_MB)
    mesh = DistributedDataParallel(_mlp(), bucket_cap_mb=BUCKET_MB)
    plan_file = Path(tempfile.mkdtemp()) / "plan.json" if name == "cell_plan" else None
    warnings: list[str] = []
    collect = _Collect(warnings)
    if name == "env_plan":
        os.environ[PLAN_ENV] = "hierarchical_leader/bf16/1MB"
    if plan_file is not None and rank == 0:  # an agent's workers: rank 0 reads the file
        os.environ[PLAN_FILE_ENV] = str(plan_file)
        os.environ[IPC_ENV] = f"ipc://{plan_file.parent / 'agent.sock'}"  # nobody reads it
        logging.getLogger(mesh_hook.__name__).addHandler(collect)
    try:
        hook = prepare(mesh, MeshHookConfig(gpus_per_node=2, **overrides), plan_provider=provider)
    finally:
        os.environ.pop(PLAN_ENV, None)
        os.environ.pop(PLAN_FILE_ENV, None)
        os.environ.pop(IPC_ENV, None)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (ref, mesh)]
    gen = torch.Generator().manual_seed(100 + rank)
    errors, losses = [], []
    for step in range(steps):
        if plan_file is not None and rank == 0 and step in CELL_PLANS:
            write_plan(plan_file, CELL_PLANS[step])
        x = torch.randn(2, 16, generator=gen)
        y = torch.randn(2, 4, generator=gen)
        step_losses = []
        for model, opt in zip((ref, mesh), opts, strict=True):
            if model is mesh and name == "straggler" and rank == SLOW_RANK:
                _busy(SLOW_S)  # the others wait for it in the hook's collectives
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            step_losses.append(float(loss.detach()))
        errors.append(max_grad_error(ref, mesh))
        losses.append(step_losses)
        for opt in opts:
            opt.step()
    logging.getLogger(mesh_hook.__name__).removeHandler(collect)
    published = list(hook.signal.links or ()) if hook.signal is not None else None
    measured = [list(m) for m in hook.signal.measured] if hook.signal is not None else None
    hook.close()
    return {
        "errors": errors,
        "losses": losses,
        "plans": [[s, v, c.label()] for s, v, c in hook.plans],
        "records": len(hook.records),
        "groups": sorted({r.group for r in hook.records}),
        "emulated": sorted({r.algorithm for r in hook.records if r.emulated}),
        "algorithms": sorted({r.algorithm for r in hook.records}),
        "steps": hook.step,
        "stragglers": [[e.rank, e.step] for e in hook.stragglers],
        "windows": [[step, ran.label(), busy, comm] for step, ran, busy, comm in hook.windows],
        "record_plans": sorted({(r.step, r.algorithm, r.compression) for r in hook.records}),
        "warnings": warnings,
        "published_links": published,
        "published_measured": measured,
    }


class _Collect(logging.Handler):
    """Keeps the hook's warnings (rank 0 of "cell_plan")."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def worker(rank: int, world: int, store_path: str, out: str, names: list[str]) -> None:
    """Join the gloo group through a file store, run ``names``, write ``rank<r>.json``."""
    torch.set_num_threads(1)
    os.environ["LOCAL_WORLD_SIZE"] = "2"
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    result = {name: _scenario(name, rank, world) for name in names}
    leave_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def run(out: Path, world: int = 4, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Spawn ``world`` gloo ranks running ``names`` (default: every scenario); return per rank."""
    import torch.multiprocessing as mp

    names = names or list(SCENARIOS)
    mp.spawn(worker, args=(world, str(out / "store"), str(out), names), nprocs=world, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = run(Path(tmp), names=sys.argv[1:] or None)
        for name, res in results[0].items():
            print(name, max(res["errors"]), res["plans"], res["groups"], res["emulated"])
            print("  windows:", res["windows"], "stragglers:", res["stragglers"])
