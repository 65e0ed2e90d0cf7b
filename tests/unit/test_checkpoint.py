"""Atomic checkpoints: layout, the latest pointer, pruning, crash safety and clear errors."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from infermesh.core.errors import CheckpointError
from infermesh.models.tiny_gpt import CharTokenizer, TinyGPT, TinyGPTConfig
from infermesh.train.checkpoint import (
    CHECKPOINT_FILE,
    LATEST_FILE,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def payload(step: int) -> dict[str, Any]:
    return {"step": step, "weights": torch.full((3,), float(step))}


def crash(*args: object) -> None:
    """Stands in for a file-system call at the moment the machine dies."""
    raise OSError("injected crash")


def visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_save_writes_a_step_directory_and_points_latest_at_it(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 7, payload(7))
    assert path == tmp_path / "step_00000007"
    assert (path / CHECKPOINT_FILE).is_file()
    assert (tmp_path / LATEST_FILE).read_text() == "step_00000007\n"
    assert latest_checkpoint(tmp_path) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST_FILE, "step_00000007"]


def test_latest_is_none_when_nothing_was_saved(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_keep_last_deletes_the_oldest_checkpoints(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, payload(step), keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000030", "step_00000040"]
    assert load_checkpoint(latest_checkpoint(tmp_path) or tmp_path)["step"] == 40


def test_a_crash_before_the_latest_pointer_is_replaced_keeps_the_previous_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, 10, payload(10))

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match=re.escape("injected")):
        save_checkpoint(tmp_path, 20, payload(20))
    monkeypatch.undo()
    latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "step_00000010"
    assert load_checkpoint(latest)["step"] == 10


def test_a_crash_before_the_rename_leaves_no_visible_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, 10, payload(10))

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match=re.escape("injected")):
        save_checkpoint(tmp_path, 20, payload(20))
    monkeypatch.undo()
    assert visible(tmp_path) == [LATEST_FILE, "step_00000010"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-step")] == []
    assert load_checkpoint(latest_checkpoint(tmp_path) or tmp_path)["step"] == 10


def test_a_crash_while_writing_the_file_leaves_no_visible_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, 10, payload(10))
    real_save = torch.save

    def half_write(obj: object, f: Any) -> None:
        real_save(obj, f)
        f.truncate(100)
        raise OSError("injected crash in torch.save")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match=re.escape("injected")):
        save_checkpoint(tmp_path, 20, payload(20))
    monkeypatch.undo()
    assert visible(tmp_path) == [LATEST_FILE, "step_00000010"]
    assert load_checkpoint(latest_checkpoint(tmp_path) or tmp_path)["step"] == 10


def test_a_step_left_behind_by_a_crash_is_replaced_when_saved_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, 10, payload(10))
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match=re.escape("injected")):
        save_checkpoint(tmp_path, 20, {"step": 20, "stale": True})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000010"

    save_checkpoint(tmp_path, 20, payload(20))
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000020"
    assert "stale" not in load_checkpoint(tmp_path / "step_00000020")
    assert visible(tmp_path) == [LATEST_FILE, "step_00000010", "step_00000020"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_corrupt_checkpoint_gives_an_error_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 10, payload(10))
    file = path / CHECKPOINT_FILE
    file.write_bytes(file.read_bytes()[:50])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(file) in message
    assert "resume from an older checkpoint" in message
    assert "\n" not in message


def test_a_missing_checkpoint_gives_an_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointError, match=re.escape(f"no checkpoint at {tmp_path / 'step_00000001'}")
    ):
        load_checkpoint(tmp_path / "step_00000001")


def test_a_latest_pointer_to_a_deleted_checkpoint_is_reported(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 10, payload(10))
    (tmp_path / LATEST_FILE).write_text("step_00000099\n")
    with pytest.raises(CheckpointError, match=re.escape("complete checkpoints: step_00000010")):
        latest_checkpoint(tmp_path)


def test_resume_payload_round_trips_model_optimizer_and_positions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abc def\n")
    cfg = TinyGPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    model = TinyGPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, tok.vocab_size, (2, 8))

    def train_step(m: TinyGPT, o: torch.optim.Optimizer) -> float:
        _, loss = m(x, x)
        assert loss is not None
        o.zero_grad()
        loss.backward()
        o.step()
        return loss.item()

    train_step(model, opt)
    save_checkpoint(
        tmp_path,
        1,
        {
            "model_config": cfg.to_dict(),
            "tokenizer": tok.to_dict(),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": 1,
            "data_position": 16,
            "tokens_seen": 128,
            "config": {"trainer": {"lr": 1e-2, "fail_at_step": None}},
        },
    )
    loaded = load_checkpoint(latest_checkpoint(tmp_path) or tmp_path)
    restored = TinyGPT(TinyGPTConfig.from_dict(loaded["model_config"]))
    restored.load_state_dict(loaded["model"])
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1e-2)
    restored_opt.load_state_dict(loaded["optimizer"])
    assert CharTokenizer.from_dict(loaded["tokenizer"]).vocab == tok.vocab
    assert (loaded["step"], loaded["data_position"], loaded["tokens_seen"]) == (1, 16, 128)
    assert loaded["config"]["trainer"] == {"lr": 1e-2, "fail_at_step": None}
    # The next step from the restored state matches the next step of the original.
    assert train_step(restored, restored_opt) == train_step(model, opt)
    torch.testing.assert_close(restored.state_dict(), model.state_dict())
