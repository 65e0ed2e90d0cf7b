"""Train a tiny character-level GPT on Python's own standard library source.

Runs as a single process or under any launcher that sets the torch.distributed environment::

    python examples/train_tiny_gpt.py trainer.max_steps=50 model.n_layer=2
    torchrun --standalone --nproc-per-node 2 examples/train_tiny_gpt.py
    infermesh-run --standalone --nproc-per-node 2 examples/train_tiny_gpt.py

The job config is ``configs/job/tiny_gpt.yaml`` composed with the command-line overrides by
Hydra's compose API, then converted at once into :class:`JobConfig` (typed dataclasses); a
bad override prints one line naming the key and exits with code 2.

Training resumes from the newest checkpoint in ``<trainer.out_dir>/checkpoints`` (model,
optimizer, step and data position). Checkpoints are written by rank 0 every
``trainer.ckpt_every`` steps and at the end. Rank 0 logs progress every
``trainer.log_every`` steps and prints one summary line at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel

from infermesh.core.config import compose_config, one_line, to_dataclass
from infermesh.core.errors import CheckpointError, UsageError
from infermesh.models.tiny_gpt import CharTokenizer, TinyGPT, TinyGPTConfig
from infermesh.train import heartbeat, leave_process_group, prepare
from infermesh.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from infermesh.train.data import DataConfig, TokenBatchSampler, build_tokenizer, load_corpus

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "job"
CONFIG_NAME = "tiny_gpt"
PROG = "train_tiny_gpt"

log = logging.getLogger(PROG)

_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainerConfig:
    """The training loop: optimisation, logging, checkpoints and failure injection."""

    max_steps: int = 300
    """Train until this many optimizer steps in total (counting steps before a resume)."""

    lr: float = 2e-3
    """AdamW learning rate (constant)."""

    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices and embeddings only (not biases or norms)."""

    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""

    log_every: int = 50
    """Rank 0 logs loss, tokens/s and ms/step every this many steps (and at the last step)."""

    ckpt_every: int = 100
    """Save a checkpoint every this many steps (and at the last step)."""

    keep_last: int = 3
    """Keep the newest this many checkpoints; older ones are deleted."""

    out_dir: str = "runs/tiny_gpt"
    """Run directory; checkpoints go to ``<out_dir>/checkpoints``."""

    seed: int = 0
    """Seed of the model initialisation."""

    fail_at_step: int | None = None
    """Test restarts: rank ``fail_rank`` raises RuntimeError before this step, first attempt only.

    The first attempt is the one where ``TORCHELASTIC_RESTART_COUNT`` is unset or ``0``, so a
    launcher that restarts the workers lets the second attempt resume and finish.
    """

    fail_rank: int = 0
    """Global rank that raises the injected failure (must be below the world size)."""

    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``."""

    mesh_hook: bool = True
    """All-reduce gradients with InferMesh's MeshHook (planned collectives, timings, straggler
    detection); false keeps DDP's default all-reduce. Used whenever the job runs under DDP."""

    def __post_init__(self) -> None:
        positive = ("max_steps", "log_every", "ckpt_every", "keep_last")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"trainer.lr must be > 0, got {self.lr}; use e.g. trainer.lr=2e-3")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")
        if not self.out_dir:
            raise ValueError("trainer.out_dir is empty; name a run directory, e.g. runs/tiny_gpt")
        if self.seed < 0:
            raise ValueError(f"trainer.seed must be >= 0, got {self.seed}")
        if self.fail_at_step is not None and self.fail_at_step < 1:
            raise ValueError(
                f"trainer.fail_at_step must be a step >= 1 or null, got {self.fail_at_step}"
            )
        if self.fail_rank < 0:
            raise ValueError(f"trainer.fail_rank must be >= 0, got {self.fail_rank}")
        if self.device not in _DEVICES:
            raise ValueError(
                f"trainer.device must be one of {', '.join(_DEVICES)}, got {self.device!r}"
            )


@dataclass
class JobConfig:
    """The whole job: one dataclass per section of ``configs/job/tiny_gpt.yaml``."""

    model: TinyGPTConfig
    """Model shape; ``vocab_size`` is a placeholder until the tokenizer is known."""

    data: DataConfig
    """Corpus and batching."""

    trainer: TrainerConfig
    """Training loop."""


# ---------------------------------------------------------------------------------------------
# Config: Hydra composes YAML + overrides; everything after this section sees dataclasses only.
# ---------------------------------------------------------------------------------------------

_VOCAB_FROM_DATA = 1  # placeholder vocab_size until the tokenizer is loaded


def parse_job_config(overrides: list[str]) -> JobConfig:
    """Compose ``configs/job/tiny_gpt.yaml`` with ``overrides`` into a :class:`JobConfig`.

    Raises :class:`UsageError` (one line, naming the key and the fix) for a bad override.
    """
    values = compose_config(CONFIG_DIR, CONFIG_NAME, overrides)
    values.pop("launch", None)  # how `infermesh jobs submit` runs the job; not read here
    sections = {"model", "data", "trainer"}
    for key in values:
        if key not in sections:
            raise UsageError(
                f"unknown config section '{key}'; known: {', '.join(sorted(sections))}"
            )
    source = f"{CONFIG_DIR / CONFIG_NAME}.yaml"
    job = JobConfig(
        model=to_dataclass(
            TinyGPTConfig, values.get("model", {}), "model", source, vocab_size=_VOCAB_FROM_DATA
        ),
        data=to_dataclass(DataConfig, values.get("data", {}), "data", source),
        trainer=to_dataclass(TrainerConfig, values.get("trainer", {}), "trainer", source),
    )
    if job.data.block_size > job.model.block_size:
        raise UsageError(
            f"data.block_size ({job.data.block_size}) exceeds model.block_size "
            f"({job.model.block_size}); lower data.block_size or raise model.block_size"
        )
    return job


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "trainer.device=cuda but no CUDA device is available; "
            "use trainer.device=auto or trainer.device=cpu"
        )
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def _make_optimizer(model: TinyGPT, cfg: TrainerConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def _check_same_model(saved: dict[str, Any], wanted: TinyGPTConfig, path: Path) -> None:
    diffs = [
        f"model.{k}={saved.get(k)!r} (this run: {v!r})"
        for k, v in wanted.to_dict().items()
        if saved.get(k) != v
    ]
    if diffs:
        raise UsageError(
            f"checkpoint {path} was trained with {', '.join(diffs)}; use the checkpoint's "
            "model settings or another trainer.out_dir"
        )


class _Trainer:
    """One rank's training run (plain process or a member of the default process group)."""

    def __init__(self, job: JobConfig, device: torch.device, rank: int, world: int) -> None:
        self.job, self.device, self.rank, self.world = job, device, rank, world
        self.distributed = dist.is_initialized()
        tr, data = job.trainer, job.data
        if tr.fail_at_step is not None and tr.fail_rank >= world:
            raise UsageError(
                f"trainer.fail_rank={tr.fail_rank} is not a rank of this world of size {world}; "
                f"use a rank below {world}"
            )
        self.ckpt_dir = Path(tr.out_dir) / "checkpoints"
        self.resumed_from = resumed_from = latest_checkpoint(self.ckpt_dir)
        payload = load_checkpoint(resumed_from) if resumed_from else None

        text = load_corpus(data.max_chars)
        if payload is not None:
            self.tokenizer = CharTokenizer.from_dict(payload["tokenizer"])
        else:
            self.tokenizer = build_tokenizer(text)
        tokens = self.tokenizer.encode_tensor(text)
        self.model_cfg = dataclasses.replace(job.model, vocab_size=self.tokenizer.vocab_size)

        torch.manual_seed(tr.seed)
        self.model = TinyGPT(self.model_cfg).to(device)
        self.optimizer = _make_optimizer(self.model, tr)
        self.step = self.tokens_seen = 0
        position = 0
        if resumed_from is not None and payload is not None:
            _check_same_model(payload["model_config"], self.model_cfg, resumed_from)
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.step = payload["step"]
            position = payload["data_position"]
            self.tokens_seen = payload["tokens_seen"]
            log.info(
                "resumed from %s at step %d (data position %d)", resumed_from, self.step, position
            )
        self.net: torch.nn.Module = self.model
        self.hook = None
        if self.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
            if tr.mesh_hook:
                self.hook = prepare(self.net)
        self.sampler = TokenBatchSampler(
            tokens,
            batch_size=data.batch_size,
            block_size=data.block_size,
            seed=data.seed,
            rank=rank,
            world_size=world,
            position=position,
        )

    def _global_mean(self, value: torch.Tensor) -> float:
        value = value.detach().clone().float()
        if self.distributed:
            dist.all_reduce(value)
            value /= self.world
        return float(value)

    def _save(self) -> Path:
        path = self.ckpt_dir / f"step_{self.step:08d}"
        if self.rank == 0:
            payload = {
                "model_name": "tiny_gpt",
                "model_config": self.model_cfg.to_dict(),
                "tokenizer": self.tokenizer.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "data_position": self.sampler.position,
                "tokens_seen": self.tokens_seen,
                "world_size": self.world,
                "config": {
                    "model": self.model_cfg.to_dict(),
                    "data": dataclasses.asdict(self.job.data),
                    "trainer": dataclasses.asdict(self.job.trainer),
                },
            }
            path = save_checkpoint(self.ckpt_dir, self.step, payload, self.job.trainer.keep_last)
        if self.distributed:
            dist.barrier()
        return path

    def run(self) -> str:
        """Train to ``trainer.max_steps``; return the summary line (meaningful on rank 0)."""
        tr = self.job.trainer
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        tokens_per_step = self.job.data.batch_size * self.job.data.block_size * self.world
        start_step = self.step
        first_loss: float | None = None
        last_loss = torch.zeros((), device=self.device)
        window_loss = torch.zeros((), device=self.device)
        window_steps = 0
        checkpoint = self.resumed_from
        self.net.train()
        t_start = t_window = time.perf_counter()
        while self.step < tr.max_steps:
            if tr.fail_at_step == self.step + 1 and self.rank == tr.fail_rank and first_attempt:
                raise RuntimeError(f"injected failure at step {self.step + 1}")
            x, y = (t.to(self.device, non_blocking=True) for t in self.sampler.next_batch())
            _, loss = self.net(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tr.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tr.grad_clip)
            self.optimizer.step()
            self.step += 1
            self.tokens_seen += tokens_per_step
            heartbeat(self.step)
            last_loss = loss.detach()
            window_loss += last_loss
            window_steps += 1
            if first_loss is None:
                first_loss = self._global_mean(last_loss)
            if self.step % tr.log_every == 0 or self.step == tr.max_steps:
                mean_loss = self._global_mean(window_loss / window_steps)
                now = time.perf_counter()
                elapsed = now - t_window
                log.info(
                    "step %d/%d loss %.4f %.1fk tok/s %.1f ms/step",
                    self.step,
                    tr.max_steps,
                    mean_loss,
                    tokens_per_step * window_steps / elapsed / 1e3,
                    elapsed / window_steps * 1e3,
                )
                window_loss.zero_()
                window_steps = 0
                t_window = now
            if self.step % tr.ckpt_every == 0 or self.step == tr.max_steps:
                checkpoint = self._save()
        elapsed = time.perf_counter() - t_start
        if self.hook is not None:
            self.hook.close()  # the last step's collective timings reach the agent
        ran = self.step - start_step
        steps = f"{self.step} steps" + (f" (resumed at {start_step})" if start_step else "")
        if ran == 0:
            return (
                f"tiny_gpt: {steps}, world {self.world}, nothing to do "
                f"(trainer.max_steps={tr.max_steps}), checkpoint {checkpoint}"
            )
        rate = ran * tokens_per_step / elapsed
        return (
            f"tiny_gpt: {steps}, world {self.world}, "
            f"loss {first_loss:.2f} -> {self._global_mean(last_loss):.2f}, "
            f"{rate / 1e3:.1f}k tok/s, checkpoint {checkpoint}"
        )


def train(job: JobConfig) -> str:
    """Run the job in this process (joining the process group if launched); return the summary."""
    device = _resolve_device(job.trainer.device)
    launched = "RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if launched else 0
    world = dist.get_world_size() if launched else 1
    try:
        summary = _Trainer(job, device, rank, world).run()  # drops the DDP model on return
    except BaseException:
        if launched:
            dist.destroy_process_group()  # no barrier: the other ranks may never reach one
        raise
    if launched:
        leave_process_group()
    return summary


@record
def main(argv: list[str] | None = None) -> int:
    """Entry point: parse overrides, train, print the summary on rank 0; return the exit code."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s: %(message)s",
    )
    try:
        job = parse_job_config(sys.argv[1:] if argv is None else argv)
        summary = train(job)
    except UsageError as exc:
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    if rank == 0:
        print(summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
