"""Hydra configs composed into typed dataclasses, with one-line errors for bad overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from infermesh.core.config import compose_config, to_dataclass
from infermesh.core.errors import UsageError


@dataclass
class Section:
    steps: int = 10
    """Steps."""
    lr: float = 0.1
    """Learning rate."""
    name: str | None = None
    """A name."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "job.yaml").write_text("train:\n  steps: 10\n  lr: 0.1\n  name: null\n")
    return tmp_path


def test_overrides_are_composed_into_a_typed_dataclass(config_dir: Path):
    values = compose_config(config_dir, "job", ["train.steps=50", "train.lr=1"])
    section = to_dataclass(Section, values["train"], "train")
    assert section == Section(steps=50, lr=1.0, name=None)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.stepz=5",
            "unknown config key 'train.stepz' in override 'train.stepz=5'; "
            "known keys in train: steps, lr, name",
        ),
        (
            "train.steps=abc",
            "train.steps must be an integer, got 'abc'; fix the override, e.g. train.steps=10",
        ),
        ("train.steps=0", "train.steps must be >= 1, got 0"),
        ("train.steps=[1", "cannot parse the override 'train.steps=[1'"),
    ],
)
def test_a_bad_override_is_a_one_line_usage_error(config_dir: Path, override: str, message: str):
    with pytest.raises(UsageError) as e:
        values = compose_config(config_dir, "job", [override])
        to_dataclass(Section, values["train"], "train")
    assert message in str(e.value)
    assert "\n" not in str(e.value)
