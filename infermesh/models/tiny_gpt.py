"""A small character-level GPT (decoder-only transformer) and its tokenizer.

The training example (``examples/train_tiny_gpt.py``) trains :class:`TinyGPT` on Python
source text; its checkpoints hold the :class:`TinyGPTConfig` (as a plain dict) and the
:class:`CharTokenizer` (as :meth:`CharTokenizer.to_dict`), so a model server can rebuild the
model, encode prompts and decode outputs from the checkpoint alone.

Only ``torch`` is imported; attention uses
:func:`torch.nn.functional.scaled_dot_product_attention` with ``is_causal=True``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["CharTokenizer", "TinyGPT", "TinyGPTConfig"]


@dataclass
class TinyGPTConfig:
    """Shape of a :class:`TinyGPT`. Validated on construction."""

    vocab_size: int
    """Number of distinct tokens (characters); taken from the tokenizer, not set by hand."""

    block_size: int = 64
    """Longest context in tokens; also the size of the learned position table."""

    n_layer: int = 4
    """Number of transformer blocks."""

    n_head: int = 4
    """Attention heads per block; must divide ``n_embd``."""

    n_embd: int = 128
    """Width of the residual stream (embedding size)."""

    dropout: float = 0.0
    """Dropout probability on attention weights, residual branches and embeddings (0 <= p < 1)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"model.{name} must be a positive integer, got {value!r}; set it to 1 or more"
                )
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd must be divisible by model.n_head, got n_embd={self.n_embd} "
                f"and n_head={self.n_head}; pick n_embd as a multiple of n_head "
                f"(e.g. n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))})"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float):
            raise ValueError(f"model.dropout must be a number, got {self.dropout!r}; use e.g. 0.1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"model.dropout must be in [0, 1), got {self.dropout!r}; use e.g. 0.0 or 0.1"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (what checkpoints store)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> TinyGPTConfig:
        """Rebuild a config from :meth:`to_dict` output."""
        return cls(**fields)


class CharTokenizer:
    """Maps characters to token ids and back.

    ``vocab`` is a string of distinct characters; the id of a character is its index in it.
    Characters that are not in the vocabulary encode to the id of ``unknown`` (by default a
    space), so any prompt can be encoded; decoding is exact for every id in range.
    """

    def __init__(self, vocab: str, unknown: str = " ") -> None:
        if not vocab:
            raise ValueError("tokenizer vocab is empty; build it from a non-empty text")
        if len(set(vocab)) != len(vocab):
            raise ValueError(
                f"tokenizer vocab has repeated characters (length {len(vocab)}, "
                f"{len(set(vocab))} distinct); give each character once"
            )
        if len(unknown) != 1 or unknown not in vocab:
            raise ValueError(
                f"tokenizer fallback character {unknown!r} is not a single character of the "
                "vocab; pick one that occurs in it (a space by default)"
            )
        self.vocab = vocab
        self.unknown = unknown
        self._ids = {ch: i for i, ch in enumerate(vocab)}
        self.unknown_id = self._ids[unknown]
        # Lookup table from code point to id; code points past its end are unknown.
        self._lut = torch.full((max(map(ord, vocab)) + 2,), self.unknown_id, dtype=torch.long)
        self._lut[torch.tensor([ord(ch) for ch in vocab])] = torch.arange(len(vocab))

    @classmethod
    def from_text(cls, text: str, unknown: str = " ") -> CharTokenizer:
        """Build a tokenizer whose vocabulary is the sorted set of characters in ``text``.

        ``unknown`` is added to the vocabulary when ``text`` does not contain it.
        """
        return cls("".join(sorted(set(text) | {unknown})), unknown)

    @property
    def vocab_size(self) -> int:
        """Number of ids (``len(vocab)``)."""
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Return the ids of ``text``; unknown characters give :attr:`unknown_id`."""
        ids, unk = self._ids, self.unknown_id
        return [ids.get(ch, unk) for ch in text]

    def encode_tensor(self, text: str) -> torch.Tensor:
        """Like :meth:`encode` but vectorised: a 1-D ``torch.long`` tensor (fast for corpora)."""
        if not text:
            return torch.empty(0, dtype=torch.long)
        points = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)
        return self._lut[points.clamp(max=len(self._lut) - 1).long()]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Return the text of ``ids``; raises ValueError for an id outside the vocabulary."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        n = len(self.vocab)
        for i in values:
            if not 0 <= i < n:
                raise ValueError(
                    f"token id {i} is outside the tokenizer vocabulary (0..{n - 1}); "
                    "decode ids produced by a model with this tokenizer's vocab_size"
                )
        return "".join(self.vocab[i] for i in values)

    def to_dict(self) -> dict[str, str]:
        """Return a plain dict to store in a checkpoint (see :meth:`from_dict`)."""
        return {"vocab": self.vocab, "unknown": self.unknown}

    @classmethod
    def from_dict(cls, state: dict[str, str]) -> CharTokenizer:
        """Rebuild a tokenizer from :meth:`to_dict` output."""
        return cls(state["vocab"], state["unknown"])


class _CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class _Block(nn.Module):
    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = _CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """GPT-style decoder: token + position embeddings, pre-norm blocks, tied output head."""

    def __init__(self, cfg: TinyGPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(logits, loss)`` for ids ``idx`` of shape ``(batch, time)``.

        ``logits`` has shape ``(batch, time, vocab_size)``; ``loss`` is the mean cross-entropy
        against ``targets`` (same shape as ``idx``), or None when ``targets`` is None.
        """
        t = idx.shape[1]
        if t > self.config.block_size:
            raise ValueError(
                f"input has {t} tokens but model.block_size is {self.config.block_size}; "
                "crop the input to the last block_size tokens"
            )
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``idx`` (``(batch, time)`` ids) by ``max_new_tokens`` sampled tokens.

        Runs in eval mode (no dropout) and restores the previous mode afterwards. The context
        is cropped to the last ``block_size`` tokens. ``temperature`` 0 picks the most likely
        token (greedy); otherwise logits are divided by it and, with ``top_k``, only the ``k``
        most likely tokens are sampled. ``generator`` makes sampling reproducible.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                logits, _ = self(idx[:, -self.config.block_size :])
                last = logits[:, -1, :]
                if temperature == 0:
                    nxt = last.argmax(dim=-1, keepdim=True)
                else:
                    last = last / temperature
                    if top_k is not None:
                        kth = torch.topk(last, min(top_k, last.size(-1))).values[:, -1:]
                        last = last.masked_fill(last < kth, float("-inf"))
                    probs = F.softmax(last, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=generator)
                idx = torch.cat([idx, nxt], dim=1)
        finally:
            self.train(was_training)
        return idx
