"""The checkpoint model server: its configuration and how a checkpoint path is resolved.

``infermesh serve --checkpoint PATH`` accepts a run directory (``trainer.out_dir``, holding
``checkpoints/``), a run's checkpoint directory (the one holding ``latest`` and ``step_*``;
the newest checkpoint is served), one ``step_*`` directory, or a ``checkpoint.pt`` file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from infermesh.core.errors import CheckpointError, UsageError
from infermesh.models.tiny_gpt import CharTokenizer, TinyGPT, TinyGPTConfig
from infermesh.train.checkpoint import CHECKPOINT_FILE, latest_checkpoint, load_checkpoint

__all__ = ["LoadedModel", "ServerConfig", "load_model", "resolve_checkpoint"]


@dataclass
class ServerConfig:
    """Settings of one model server process."""

    checkpoint: str
    """A run's checkpoint directory (uses ``latest``), a ``step_*`` directory or a file."""

    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0`` for every interface)."""

    port: int = 8000
    """TCP port; 0 picks a free one (the bound port is printed and in ``ready_file``)."""

    model_name: str = "tiny-gpt"
    """The id clients send as ``model`` and that ``/v1/models`` lists."""

    max_batch: int = 8
    """Largest running batch (sequences decoded together in one step)."""

    max_queue: int = 64
    """Requests allowed to wait for a batch slot; beyond it the server answers 503."""

    max_tokens_limit: int = 1024
    """Largest ``max_tokens`` a request may ask for."""

    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:N]``."""

    tls_dir: str = ""
    """Serve HTTPS with the certificate bundle in this directory; empty: plain HTTP."""

    max_body_bytes: int = 1 << 20
    """Largest request body accepted (413 beyond it)."""

    ready_file: str | None = None
    """When set, the bound ``host:port`` is written there once the server listens."""

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_tokens_limit", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise UsageError(f"--max-queue must be >= 0, got {self.max_queue!r}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be in 0..65535, got {self.port}")
        if not self.model_name:
            raise UsageError("--model-name must not be empty")

    def to_json(self) -> str:
        """The config as JSON (how a parent process hands it to a replica)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, ready for the engine."""

    model: TinyGPT
    tokenizer: CharTokenizer
    path: Path
    step: int | None
    device: str


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The ``step_*`` directory or file to load for ``path`` (see the module docstring)."""
    given = Path(path)
    if not given.exists():
        raise UsageError(
            f"--checkpoint {given}: no such file or directory; pass a run's checkpoint "
            "directory (e.g. runs/tiny_gpt/checkpoints) or one of its step_* directories"
        )
    if given.is_dir() and (given / "checkpoints").is_dir() and not (given / "latest").exists():
        given = given / "checkpoints"  # a run directory (trainer.out_dir)
    if given.is_dir() and not (given / CHECKPOINT_FILE).is_file():
        latest = latest_checkpoint(given)
        if latest is None:
            raise UsageError(
                f"--checkpoint {given}: holds neither {CHECKPOINT_FILE} nor a 'latest' pointer; "
                "train first (make demo) or pass a step_* directory"
            )
        return latest
    return given


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def load_model(path: str | os.PathLike[str], device: str = "auto") -> LoadedModel:
    """Load the model, tokenizer and weights of a checkpoint (see :func:`resolve_checkpoint`)."""
    ckpt = resolve_checkpoint(path)
    payload: dict[str, Any] = load_checkpoint(ckpt)
    missing = [k for k in ("model_config", "tokenizer", "model") if k not in payload]
    if missing:
        raise CheckpointError(
            f"checkpoint {ckpt} lacks {', '.join(missing)}; it was not written by the tiny GPT "
            "example (examples/train_tiny_gpt.py): serve a checkpoint of that job"
        )
    cfg = TinyGPTConfig.from_dict(dict(payload["model_config"]))
    model = TinyGPT(cfg)
    model.load_state_dict(payload["model"])
    dev = _pick_device(device)
    step = payload.get("step")
    return LoadedModel(
        model=model.to(dev).eval(),
        tokenizer=CharTokenizer.from_dict(payload["tokenizer"]),
        path=ckpt,
        step=int(step) if isinstance(step, int) else None,
        device=dev,
    )
