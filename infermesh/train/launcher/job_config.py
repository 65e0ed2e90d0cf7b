"""A job from a Hydra config: ``infermesh jobs submit job=tiny_gpt trainer.max_steps=200``.

``configs/job/<name>.yaml`` describes the training script's own sections (model, data,
trainer...) and one ``launch`` section that says how to run it (:class:`LaunchConfig`)::

    launch:
      script: examples/train_tiny_gpt.py   # relative to the folder that holds configs/
      nproc_per_node: 2
      nnodes: auto                         # auto, N or MIN:MAX
      max_restarts: 3

:func:`job_from_config` composes the YAML with the overrides, checks every key and value
before anything is sent (keys the YAML does not define, values of the wrong type, a bad
``launch`` section), and returns the :class:`LaunchOptions` that the same job typed as an
``infermesh-run --nnodes ... script overrides`` command would give; the overrides other than
``launch.*`` become the script's arguments. :func:`~infermesh.train.launcher.submit.job_spec`
turns those options into the coordinator's JobSpec, so both ways of submitting agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from infermesh.core.config import compose_config, to_dataclass
from infermesh.core.errors import UsageError
from infermesh.train.launcher.options import LaunchOptions, parse_options

__all__ = ["LaunchConfig", "SubmittedJob", "job_from_config", "known_jobs"]

_NNODES_RE = re.compile(r"auto|(\d+)(?::(\d+))?")
JOB_KEY = "job"


@dataclass
class LaunchConfig:
    """The ``launch`` section of a job config: what ``infermesh jobs submit`` runs."""

    script: str
    """Training script, relative to the project folder (the parent of ``configs/``)."""

    nproc_per_node: int = 1
    """Worker processes per node."""

    nnodes: str = "auto"
    """``auto`` (as many healthy nodes as fit), ``N`` or ``MIN:MAX``."""

    max_restarts: int = 3
    """Restarts of the worker group before the job fails."""

    def __post_init__(self) -> None:
        if not self.script:
            raise ValueError("launch.script is empty; name the training script to run")
        if self.nproc_per_node < 1:
            raise ValueError(
                f"launch.nproc_per_node must be >= 1, got {self.nproc_per_node}; "
                "e.g. launch.nproc_per_node=2"
            )
        m = _NNODES_RE.fullmatch(self.nnodes.strip())
        if not m or (m.group(1) and int(m.group(1)) < 1):
            raise ValueError(
                f"launch.nnodes must be auto, N or MIN:MAX with N >= 1, got {self.nnodes!r}; "
                "e.g. launch.nnodes=2 or launch.nnodes=1:4"
            )
        if m.group(2) and int(m.group(2)) < int(m.group(1)):
            raise ValueError(
                f"launch.nnodes {self.nnodes!r}: MIN is larger than MAX; write MIN:MAX"
            )
        if self.max_restarts < 0:
            raise ValueError(f"launch.max_restarts must be >= 0, got {self.max_restarts}")


@dataclass
class SubmittedJob:
    """What a ``jobs submit`` command line resolves to, before it is sent."""

    name: str
    """The config's name (``tiny_gpt``), also the job's name."""
    config: Path
    """The composed YAML file."""
    launch: LaunchConfig
    options: LaunchOptions
    """Equivalent ``infermesh-run`` options (script, its arguments, nodes, restarts)."""


def known_jobs(config_dir: Path) -> list[str]:
    return sorted(p.stem for p in (config_dir / "job").glob("*.yaml"))


def _split(overrides: list[str], config_dir: Path) -> tuple[str, list[str]]:
    """(job name, other overrides); the job is chosen with ``job=NAME``."""
    names = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == JOB_KEY]
    rest = [o for o in overrides if o.partition("=")[0] != JOB_KEY]
    known = ", ".join(known_jobs(config_dir)) or "none"
    if not names:
        raise UsageError(
            f"no job config chosen; add job=NAME (known in {config_dir / 'job'}: {known}), "
            "e.g. infermesh jobs submit job=tiny_gpt trainer.max_steps=200"
        )
    if len(names) > 1:
        raise UsageError(f"job= given {len(names)} times ({', '.join(names)}); give it once")
    name = names[0]
    if not (config_dir / "job" / f"{name}.yaml").is_file():
        raise UsageError(
            f"unknown job config {name!r}: no {config_dir / 'job' / (name + '.yaml')}; "
            f"known: {known}"
        )
    return name, rest


def job_from_config(config_dir: str | Path, overrides: list[str]) -> SubmittedJob:
    """Resolve ``job=NAME key=value ...`` against ``config_dir``; :class:`UsageError` if bad."""
    root = Path(config_dir)
    if not (root / "job").is_dir():
        raise UsageError(
            f"no job configs in {root / 'job'}; run from the project folder or pass "
            "--config-dir DIR (the folder that holds job/NAME.yaml)"
        )
    root = root.resolve()
    name, rest = _split(overrides, root)
    source = root / "job" / f"{name}.yaml"
    values = compose_config(root / "job", name, rest, check_types=True, typed_sections=("launch",))
    section = values.get("launch")
    if section is None:
        raise UsageError(
            f"{source} has no launch section; add one, e.g. "
            "launch: {script: examples/train.py, nproc_per_node: 2, nnodes: auto}"
        )
    if isinstance(section, dict) and isinstance(section.get("nnodes"), int):
        section["nnodes"] = str(section["nnodes"])  # launch.nnodes=2 means "2"
    launch: LaunchConfig = to_dataclass(LaunchConfig, section, "launch", str(source))
    script = Path(launch.script)
    if not script.is_absolute():
        script = root.parent / script
    if not script.is_file():
        raise UsageError(
            f"launch.script {launch.script!r}: no such file ({script}); fix the launch section "
            f"of {source} or override it, e.g. launch.script=path/to/train.py"
        )
    script_args = [o for o in rest if not o.lstrip("+~").startswith("launch.")]
    options = parse_options(
        [
            "--nnodes",
            launch.nnodes.strip(),
            "--nproc-per-node",
            str(launch.nproc_per_node),
            "--max-restarts",
            str(launch.max_restarts),
            "--job-name",
            name,
            str(script),
            *script_args,
        ]
    )
    return SubmittedJob(name=name, config=source, launch=launch, options=options)
