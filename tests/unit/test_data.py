"""The standard-library corpus and the per-rank batch sampler."""

from __future__ import annotations

import re
import time

import pytest
import torch

from infermesh.train.data import DataConfig, TokenBatchSampler, build_tokenizer, load_corpus

BLOCK = 8


def sampler(**kwargs: int) -> TokenBatchSampler:
    args = {"batch_size": 4, "block_size": BLOCK, "seed": 1, "rank": 0, "world_size": 1}
    args.update(kwargs)
    return TokenBatchSampler(torch.arange(10_000), **args)


def windows(s: TokenBatchSampler, batches: int) -> list[int]:
    """Window numbers of the next ``batches`` batches (each window starts at k * BLOCK)."""
    out: list[int] = []
    for _ in range(batches):
        x, _ = s.next_batch()
        out += (x[:, 0] // BLOCK).tolist()
    return out


def test_corpus_is_deterministic_and_has_the_requested_length() -> None:
    a = load_corpus(200_000)
    assert len(a) == 200_000
    assert a == load_corpus(200_000)
    assert load_corpus(50_000) == a[:50_000]


def test_default_corpus_loads_and_encodes_in_under_a_second() -> None:
    start = time.perf_counter()
    text = load_corpus(DataConfig().max_chars)
    tokens = build_tokenizer(text).encode_tensor(text)
    elapsed = time.perf_counter() - start
    assert len(tokens) == DataConfig().max_chars
    assert elapsed < 1.0, f"loading took {elapsed:.2f} s"


def test_corpus_is_python_source() -> None:
    text = load_corpus(100_000)
    assert "def " in text and "import " in text


def test_vocabulary_is_the_ascii_characters_of_the_corpus() -> None:
    tok = build_tokenizer("abc\n é")
    assert tok.vocab == "\n abc"
    assert tok.decode(tok.encode("é")) == " "


def test_targets_are_the_inputs_shifted_by_one_token() -> None:
    x, y = sampler().next_batch()
    assert x.shape == y.shape == (4, BLOCK)
    assert torch.equal(y, x + 1)  # the token stream is arange


def test_order_is_deterministic_for_the_same_seed() -> None:
    assert windows(sampler(seed=3), 5) == windows(sampler(seed=3), 5)


def test_order_depends_on_the_seed() -> None:
    assert windows(sampler(seed=3), 5) != windows(sampler(seed=4), 5)


def test_ranks_see_disjoint_windows() -> None:
    seen = [windows(sampler(rank=r, world_size=3), 20) for r in range(3)]
    assert all(len(set(w)) == len(w) for w in seen)
    assert not set(seen[0]) & set(seen[1])
    assert not set(seen[0]) & set(seen[2])
    assert not set(seen[1]) & set(seen[2])


def test_all_ranks_advance_the_same_global_position() -> None:
    samplers = [sampler(rank=r, world_size=2) for r in range(2)]
    for s in samplers:
        s.next_batch()
    assert [s.position for s in samplers] == [8, 8]


def test_resuming_at_a_saved_position_gives_the_same_next_batch() -> None:
    first = sampler(rank=1, world_size=2)
    windows(first, 7)
    expected = first.next_batch()
    resumed = sampler(rank=1, world_size=2, position=7 * 4 * 2)
    got = resumed.next_batch()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_global_order_survives_a_change_of_world_size() -> None:
    single = windows(sampler(world_size=1), 4)
    pair = [sampler(rank=r, world_size=2) for r in range(2)]
    interleaved: list[int] = []
    for _ in range(2):
        for s in pair:
            interleaved += windows(s, 1)
    assert interleaved == single


def test_epochs_wrap_around_with_a_fresh_order() -> None:
    s = sampler(batch_size=10)  # 1249 windows: a batch straddles the first epoch boundary
    epoch_windows = s.num_windows
    seen = windows(s, 250)
    first, second = seen[:epoch_windows], seen[epoch_windows : 2 * epoch_windows]
    assert sorted(first) == list(range(epoch_windows))
    assert first != second


def test_a_corpus_smaller_than_one_global_batch_is_rejected_naming_the_setting() -> None:
    with pytest.raises(ValueError, match=re.escape("raise data.max_chars")):
        TokenBatchSampler(
            torch.arange(100), batch_size=8, block_size=BLOCK, seed=0, rank=0, world_size=2
        )


def test_data_config_rejects_a_non_positive_batch_size() -> None:
    with pytest.raises(
        ValueError, match=re.escape("data.batch_size must be a positive integer, got 0")
    ):
        DataConfig(batch_size=0)
