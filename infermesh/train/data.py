"""Training data for the examples: Python's own standard library source, batched per rank.

The corpus needs no download: :func:`load_corpus` reads the ``.py`` files of the running
interpreter's standard library (``sysconfig.get_paths()["stdlib"]``) in a fixed order (the
top-level modules sorted by name, then each package directory in sorted order; installed
third-party packages and the ``test`` suite are skipped) until it has ``max_chars``
characters. The same interpreter always gives the same text.

:class:`TokenBatchSampler` cuts the token stream into windows of ``block_size`` tokens
(each sample also reads the window's next token, its last target) and deals them out in a
seeded random order: global sample ``k`` (counting over all ranks) is window
``perm(seed, k // n)[k % n]`` of the ``n`` windows, where ``perm(seed, epoch)`` is a random
permutation seeded by a hash of both. Rank ``r`` of ``world_size`` takes samples
``position + r * batch_size ...`` of each global batch, so ranks see disjoint windows
within an epoch. ``position`` counts the global samples already consumed; it is the same on
every rank, goes into checkpoints as the data position, and a sampler created with it
continues exactly where the saved one stopped (also after a change of world size).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from infermesh.models.tiny_gpt import CharTokenizer

__all__ = ["DataConfig", "TokenBatchSampler", "build_tokenizer", "load_corpus"]

logger = logging.getLogger(__name__)

_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests"})


@dataclass
class DataConfig:
    """Where the training text comes from and how it is batched."""

    max_chars: int = 3_000_000
    """Characters of standard-library source to read (the corpus size)."""

    seed: int = 1234
    """Seed of the sample order; the order also depends on rank, world size and position."""

    batch_size: int = 32
    """Sequences per rank per step (the global batch is ``batch_size * world_size``)."""

    block_size: int = 64
    """Tokens per sequence; at most ``model.block_size``."""

    def __post_init__(self) -> None:
        for name in ("max_chars", "batch_size", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"data.{name} must be a positive integer, got {value!r}; set it to 1 or more"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"data.seed must be a non-negative integer, got {self.seed!r}")
        if self.max_chars <= self.block_size:
            raise ValueError(
                f"data.max_chars ({self.max_chars}) must exceed data.block_size "
                f"({self.block_size}); raise data.max_chars"
            )


def _stdlib_sources(root: str) -> Iterator[str]:
    """Yield the stdlib ``.py`` paths in a fixed order: each directory's files, then subdirs."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def load_corpus(max_chars: int) -> str:
    """Return up to ``max_chars`` characters of this interpreter's standard library source.

    Files are decoded as UTF-8 (undecodable bytes become U+FFFD) and concatenated in the
    order described in the module docstring; the last file is cut to fit.
    """
    root = sysconfig.get_paths()["stdlib"]
    parts: list[str] = []
    total = 0
    for path in _stdlib_sources(root):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(max_chars - total)
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not parts:
        raise FileNotFoundError(
            f"no .py files under the standard library directory {root!r}; this interpreter "
            "ships without its source, so use a regular CPython installation"
        )
    if total < max_chars:
        logger.warning(
            "standard library source has only %d characters (data.max_chars=%d)", total, max_chars
        )
    return "".join(parts)


def build_tokenizer(text: str) -> CharTokenizer:
    """Return a character tokenizer over the ASCII characters of ``text``.

    Non-ASCII characters (rare in standard library source: a few names and symbols in
    docstrings) are left out of the vocabulary, so they encode to the fallback (a space);
    this keeps the vocabulary near 100 characters.
    """
    return CharTokenizer.from_text("".join(ch for ch in set(text) if ch.isascii()))


class TokenBatchSampler:
    """Deterministic ``(x, y)`` batches for one rank; see the module docstring for the order.

    ``x`` and ``y`` are ``(batch_size, block_size)`` long tensors, ``y`` shifted by one token.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        *,
        batch_size: int,
        block_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        position: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if position < 0:
            raise ValueError(f"data position must be >= 0, got {position}")
        self.num_windows = (len(tokens) - 1) // block_size
        if self.num_windows < batch_size * world_size:
            raise ValueError(
                f"the corpus has {len(tokens)} tokens: {self.num_windows} windows of "
                f"data.block_size={block_size}, fewer than one global batch "
                f"(data.batch_size={batch_size} x world size {world_size}); "
                "raise data.max_chars or lower data.batch_size"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = position  # global samples consumed (all ranks): the data position
        self._perms: dict[int, torch.Tensor] = {}
        self._offsets = torch.arange(block_size + 1)

    def _perm(self, epoch: int) -> torch.Tensor:
        perm = self._perms.get(epoch)
        if perm is None:
            # torch's CPU generator keeps only 32 bits of the seed: mix (seed, epoch) into them.
            key = hashlib.blake2b(f"{self.seed}:{epoch}".encode(), digest_size=4).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(key, "little"))
            perm = torch.randperm(self.num_windows, generator=gen)
            # A global batch spans at most two epochs: keep this one and the one before.
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = perm
        return perm

    def window_indices(self) -> torch.Tensor:
        """The window numbers of this rank's next batch (without consuming it)."""
        ks = self.position + self.rank * self.batch_size + torch.arange(self.batch_size)
        epochs, slots = ks // self.num_windows, ks % self.num_windows
        out = torch.empty(self.batch_size, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._perm(epoch)[slots[mask]]
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return this rank's next ``(x, y)`` and advance :attr:`position` by a global batch."""
        starts = self.window_indices() * self.block_size
        chunk = self.tokens[starts[:, None] + self._offsets]
        self.position += self.batch_size * self.world_size
        return chunk[:, :-1], chunk[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches forever (epochs wrap around with a fresh order)."""
        while True:
            yield self.next_batch()
