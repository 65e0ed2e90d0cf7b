"""Atomic training checkpoints in a directory.

Layout of a checkpoint directory ``ckpt_dir``::

    ckpt_dir/
      step_00000100/checkpoint.pt     complete checkpoints, one directory per step
      step_00000200/checkpoint.pt
      latest                          one line: the name of the newest checkpoint directory

:func:`save_checkpoint` writes the payload into a hidden temporary directory next to the
target (``.tmp-step_...``), fsyncs the file and the directory, renames the directory into
place as ``step_{step:08d}``, then replaces ``latest`` atomically (a temporary file, fsync,
:func:`os.replace`) and finally deletes all but the newest ``keep_last`` checkpoints. A
``step_*`` directory is therefore always complete, and a crash at any point leaves ``latest``
naming a complete checkpoint: the previous one until the final ``os.replace``, the new one
after it.

:func:`latest_checkpoint` follows ``latest``; :func:`load_checkpoint` loads a payload with
``torch.load(weights_only=True)`` (plain containers, numbers, strings and tensors only) and
turns a missing or unreadable file into a :class:`~infermesh.core.errors.CheckpointError`
that names the path and what to do.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from infermesh.core.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FILE",
    "LATEST_FILE",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
"""Name of the payload file inside a ``step_*`` directory."""

LATEST_FILE = "latest"
"""Name of the pointer file in the checkpoint directory."""

_STEP_DIR = re.compile(r"step_(\d{8,})")
_TMP_PREFIX = ".tmp-"


def _step_name(step: int) -> str:
    return f"step_{step:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(ckpt_dir: str | os.PathLike[str]) -> list[Path]:
    """Return the complete ``step_*`` checkpoint directories in ``ckpt_dir``, oldest first."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    ckpt_dir: str | os.PathLike[str], step: int, payload: dict[str, Any], keep_last: int = 3
) -> Path:
    """Write ``payload`` as checkpoint ``step`` in ``ckpt_dir`` atomically; return its path.

    Older checkpoints beyond the newest ``keep_last`` are deleted after ``latest`` points at
    the new one. Saving a step that already exists (left behind by a crash before ``latest``
    was updated) replaces it; if ``latest`` names that very step, a crash between moving the
    old directory aside and renaming the new one into place leaves ``latest`` dangling, which
    :func:`latest_checkpoint` reports.
    """
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}; use 1 to keep only the newest")
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = _step_name(step)
    final = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=root))
    try:
        with open(tmp / CHECKPOINT_FILE, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():
            # rename() cannot replace a non-empty directory: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}old-{name}-", dir=root))
            os.rename(final, old / name)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    _write_latest(root, name)
    _prune(root, keep_last, keep=final)
    logger.info("saved checkpoint %s", final)
    return final


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f"{_TMP_PREFIX}{LATEST_FILE}-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / LATEST_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(root)


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    """Delete checkpoints older than the newest ``keep_last`` (never ``keep``) and leftovers."""
    for old in list_checkpoints(root)[:-keep_last]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
    # Temporary directories of saves that crashed (only rank 0 writes, one save at a time).
    for leftover in root.glob(f"{_TMP_PREFIX}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def latest_checkpoint(ckpt_dir: str | os.PathLike[str]) -> Path | None:
    """Return the directory that ``ckpt_dir/latest`` names, or None if there is no checkpoint.

    Raises :class:`CheckpointError` when ``latest`` names something that is not a checkpoint
    directory (edited by hand, or the named directory was deleted).
    """
    root = Path(ckpt_dir)
    pointer = root / LATEST_FILE
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    path = root / name
    if not _STEP_DIR.fullmatch(name) or not (path / CHECKPOINT_FILE).is_file():
        known = ", ".join(p.name for p in list_checkpoints(root)) or "none"
        raise CheckpointError(
            f"{pointer} names {name!r}, which is not a checkpoint in {root} "
            f"(complete checkpoints: {known}); write the name of one of them into {pointer}, "
            "or delete the file to start from scratch"
        )
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint payload from a ``step_*`` directory (or its ``checkpoint.pt`` file).

    Tensors are loaded onto the CPU. Raises :class:`CheckpointError` naming the path when the
    checkpoint is missing, unreadable or not a dict.
    """
    given = Path(path)
    file = given / CHECKPOINT_FILE if given.is_dir() else given
    if not file.is_file():
        raise CheckpointError(
            f"no checkpoint at {given} (expected a step_* directory holding {CHECKPOINT_FILE}); "
            "check the path, or pass the checkpoint directory's 'latest' target"
        )
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        # First sentence only: torch's longer advice (weights_only=False) does not apply here.
        reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else "-"
        raise CheckpointError(
            f"checkpoint file {file} is unreadable ({type(exc).__name__}: {reason}); it is "
            "truncated, corrupt or not a checkpoint written by InferMesh: delete its directory "
            "and resume from an older checkpoint (point 'latest' at it) or start afresh"
        ) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"checkpoint file {file} holds a {type(payload).__name__}, not a dict payload; "
            "it was not written by save_checkpoint: point at another checkpoint"
        )
    return payload
