"""``job_from_config``: a job config plus overrides becomes infermesh-run options and a JobSpec,
and the human-readable times of the cell commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermesh.cli._cell import ago, duration, size
from infermesh.core.errors import UsageError
from infermesh.train.launcher.job_config import job_from_config, known_jobs
from infermesh.train.launcher.submit import job_spec

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def test_launch_section_becomes_launcher_options_and_the_rest_script_arguments() -> None:
    job = job_from_config(
        CONFIGS, ["job=tiny_gpt", "trainer.max_steps=200", "launch.nnodes=1:3", "model.n_layer=2"]
    )
    opts = job.options
    assert job.name == "tiny_gpt" and job.config == CONFIGS / "job" / "tiny_gpt.yaml"
    assert (opts.min_nodes, opts.max_nodes, opts.nnodes_auto) == (1, 3, False)
    assert opts.max_restarts == 3 and opts.nproc_per_node == 2
    assert Path(opts.training_script) == ROOT / "examples" / "train_tiny_gpt.py"
    assert opts.training_script_args == ["trainer.max_steps=200", "model.n_layer=2"]

    spec = job_spec(opts, job.launch.nproc_per_node)
    assert spec.name == "tiny_gpt" and spec.nproc_per_node == 2
    assert (spec.nodes_min, spec.nodes_max) == (1, 3)
    assert list(spec.args) == ["trainer.max_steps=200", "model.n_layer=2"]


def test_nnodes_auto_leaves_the_maximum_to_the_cell() -> None:
    job = job_from_config(CONFIGS, ["job=tiny_gpt"])
    spec = job_spec(job.options, job.launch.nproc_per_node)
    assert job.options.nnodes_auto
    assert (spec.nodes_min, spec.nodes_max) == (1, 0)


def test_a_config_without_launch_section_is_refused(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "bare.yaml").write_text("trainer:\n  steps: 1\n")
    with pytest.raises(UsageError, match="has no launch section; add one"):
        job_from_config(tmp_path, ["job=bare"])


def test_script_is_found_relative_to_the_project_folder(tmp_path: Path) -> None:
    (tmp_path / "configs" / "job").mkdir(parents=True)
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "configs" / "job" / "mini.yaml").write_text(
        "steps: 3\nlaunch:\n  script: train.py\n  nnodes: 2\n"
    )
    job = job_from_config(tmp_path / "configs", ["job=mini", "steps=4"])
    assert job.options.training_script == str((tmp_path / "train.py").resolve())
    assert (job.options.min_nodes, job.options.max_nodes) == (2, 2)
    assert job.options.training_script_args == ["steps=4"]
    assert known_jobs(tmp_path / "configs") == ["mini"]


def test_unknown_launch_key_names_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "x.yaml").write_text("launch:\n  script: x.py\n  gpus: 2\n")
    with pytest.raises(UsageError, match=r"unknown config key 'launch.gpus'.*nproc_per_node"):
        job_from_config(tmp_path, ["job=x"])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.04, "0.0 s"),
        (3.24, "3.2 s"),
        (252, "4 min 12 s"),
        (7500, "2 h 5 min"),
        (3 * 86400 + 4 * 3600 + 5, "3 d 4 h"),
        (-2, "0.0 s"),
    ],
)
def test_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_ago_and_size() -> None:
    assert ago(1000.0, now=1003.2) == "3.2 s ago"
    assert ago(0.0) == "-"
    assert size(512) == "512 B"
    assert size(3 * 1024**3 // 2) == "1.5 GiB"
