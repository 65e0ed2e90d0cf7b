"""Fixtures for the serving tests: a small trained checkpoint and an in-process server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from infermesh.models.tiny_gpt import CharTokenizer, TinyGPT, TinyGPTConfig
from infermesh.train.checkpoint import save_checkpoint

TEXT = "def add(a, b):\n    return a + b\n\n" * 20


def make_checkpoint(root: Path, steps: int = 40, block_size: int = 32) -> Path:
    """Train a 2-layer TinyGPT for a few steps and save it like the example job does."""
    torch.manual_seed(0)
    tok = CharTokenizer.from_text(TEXT)
    cfg = TinyGPTConfig(
        vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32
    )
    model = TinyGPT(cfg)
    data = tok.encode_tensor(TEXT)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - block_size - 1, (8,))
        x = torch.stack([data[s : s + block_size] for s in starts])
        y = torch.stack([data[s + 1 : s + block_size + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        assert loss is not None
        loss.backward()
        opt.step()
    payload = {
        "step": steps,
        "model": model.state_dict(),
        "model_config": cfg.to_dict(),
        "tokenizer": tok.to_dict(),
    }
    ckpt_dir = root / "checkpoints"
    save_checkpoint(ckpt_dir, steps, payload)
    return ckpt_dir


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run's checkpoint directory (with ``latest``) of a briefly trained tiny GPT."""
    return make_checkpoint(tmp_path_factory.mktemp("serve_ckpt"))
