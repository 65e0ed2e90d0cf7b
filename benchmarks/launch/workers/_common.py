"""Shared pieces of the benchmark workers: process group, a small DDP model, one step.

The workers are launched by ``torchrun`` or ``infermesh-run`` as ``python -u worker.py``, so
this directory is ``sys.path[0]`` and ``import _common`` works in both.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

OUT_ENV = "BENCH_OUT_DIR"
"""Environment variable naming the directory the workers write their timestamps to."""


def out_dir() -> Path:
    """The directory named by ``$BENCH_OUT_DIR`` (created if missing)."""
    path = Path(os.environ[OUT_ENV])
    path.mkdir(parents=True, exist_ok=True)
    return path


def record(name: str, value: float | None = None) -> None:
    """Write ``value`` (default: ``time.time()`` now) to ``$BENCH_OUT_DIR/name`` atomically."""
    stamp = time.time() if value is None else value
    target = out_dir() / name
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(f"{stamp:.6f}\n")
    os.replace(tmp, target)


def setup() -> tuple[DistributedDataParallel, torch.optim.Optimizer, int]:
    """Join the gloo process group and build a small DDP MLP with its optimizer.

    Returns the model, an SGD optimizer and this worker's global rank.
    """
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    return ddp, opt, dist.get_rank()


def train_step(model: DistributedDataParallel, opt: torch.optim.Optimizer) -> float:
    """One forward/backward/optimizer step on a random batch; returns the loss."""
    x = torch.randn(32, 64)
    y = torch.randint(0, 10, (32,))
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # DDP all-reduces the gradients here
    opt.step()
    return float(loss.item())
