"""MeshHook's per-algorithm NCCL communicators on one real GPU (skipped without CUDA/NCCL).

Run on a GPU machine: ``pytest -q -m gpu tests/gpu`` (``scripts/gpu_check.sh`` does it with
the wheels a bare machine lacks). Each test runs ``_nccl_worker`` in a process of its own with
``NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,ENV`` and reads what NCCL printed between the
worker's markers (default communicator / hook's groups / training).

What is asserted, on a world of one rank (``lazy``: communicators created at first use or by
``new_group(device_id=...)``; ``bound``: ``init_process_group(device_id=...)``, so
``new_group`` splits the default communicator):

- NCCL printed ``NCCL_ALGO set by environment to Ring`` then ``... to Tree`` while the hook
  created its groups, and no such line for the default communicator or during training: the
  two new communicators were initialised inside the hook's NCCL_ALGO scope, the default one
  outside it;
- where this NCCL prints ``Init COMPLETE`` per communicator: exactly two communicators were
  created with the hook's groups and none during training (no group fell back to a lazily
  created communicator outside the scope);
- ``NCCL_ALGO`` is unset in the process afterwards;
- gradients under ring, tree and halving_doubling equal those of DDP's default all-reduce
  (1e-6 relative); records say ring and tree applied, halving_doubling emulated;
- with ``NCCL_ALGO=Tree`` set for the process: one warning, no new communicator, every
  communicator reports Tree, every flat algorithm recorded as emulated.

Not observable on one GPU: which algorithm a collective actually ran. NCCL refuses two ranks
on one GPU, and it short-cuts a one-rank collective (a local reduction, no ring or tree), so
the per-collective tuning lines (``NCCL_DEBUG_SUBSYS=TUNING``: ``... Algo Ring``) and any
difference in time between ring and tree need two GPUs or more. The two-level subgroups need
several nodes of several ranks and are not exercised here either. What these tests show is
the part NCCL's algorithm choice hinges on: each communicator's tuning model was built with
the intended ``NCCL_ALGO``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
ALGO_LINE = re.compile(r"NCCL INFO NCCL_ALGO set by environment to (\S+)")
INIT_DONE = "Init COMPLETE"
LOG_DIR_ENV = "INFERMESH_TEST_LOG_DIR"
"""Where to keep each worker's output (scripts/gpu_check.sh sets it to $OUT)."""


@pytest.fixture(autouse=True)
def _needs_nccl() -> None:
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    if not dist.is_nccl_available():
        pytest.skip("this torch was built without NCCL")


Run = tuple[dict[str, Any], str]


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, str | None], Run]:
    """Worker runs by (scenario, NCCL_ALGO), each run once for the module."""
    return {}


@pytest.fixture
def run(runs: dict[tuple[str, str | None], Run], tmp_path_factory: pytest.TempPathFactory) -> Any:
    def get(scenario: str, nccl_algo: str | None = None) -> Run:
        key = (scenario, nccl_algo)
        if key not in runs:
            runs[key] = _run(scenario, tmp_path_factory.mktemp(scenario), nccl_algo)
        return runs[key]

    return get


def _run(scenario: str, tmp_path: Path, nccl_algo: str | None) -> Run:
    """Run the worker; return its result and everything it and NCCL printed."""
    env = {k: v for k, v in os.environ.items() if k not in ("NCCL_ALGO", "NCCL_DEBUG_FILE")}
    env.update(NCCL_DEBUG="INFO", NCCL_DEBUG_SUBSYS="INIT,ENV")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if nccl_algo is not None:
        env["NCCL_ALGO"] = nccl_algo
    out = tmp_path / f"{scenario}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.gpu._nccl_worker", scenario, str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=240,
    )
    if os.environ.get(LOG_DIR_ENV):
        name = f"nccl_worker_{scenario}{'_' + nccl_algo if nccl_algo else ''}.log"
        Path(os.environ[LOG_DIR_ENV], name).write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "NCCL INFO" in proc.stdout, "NCCL printed no INFO line: NCCL_DEBUG not honoured?"
    return json.loads(out.read_text()), proc.stdout


def _phases(output: str) -> dict[str, list[str]]:
    """The output's lines per phase: start, groups, training (split at the worker's markers)."""
    phases: dict[str, list[str]] = {"start": [], "groups": [], "training": [], "end": []}
    names = {"@@ default-ready": "groups", "@@ hook-ready": "training", "@@ done": "end"}
    current = "start"
    for line in output.splitlines():
        if line.strip() in names:
            current = names[line.strip()]
        else:
            phases[current].append(line)
    return phases


def _algos(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := ALGO_LINE.search(line))]


def _inits(lines: list[str]) -> int:
    return sum(INIT_DONE in line for line in lines)


@pytest.mark.parametrize("scenario", ["lazy", "bound"])
def test_ring_and_tree_communicators_are_created_under_their_ncclalgo(
    scenario: str, run: Any
) -> None:
    result, output = run(scenario)
    phases = _phases(output)
    assert _algos(phases["start"]) == []  # the default communicator: NCCL's own choice
    assert _algos(phases["groups"]) == ["Ring", "Tree"], "\n".join(phases["groups"])
    assert _algos(phases["training"]) == []
    if _inits(phases["start"]):  # this NCCL reports each communicator it completes
        assert _inits(phases["groups"]) == 2, "\n".join(phases["groups"])
        assert _inits(phases["training"]) == 0, "\n".join(phases["training"])
    assert result["env_after_groups"] is None and result["env_after"] is None
    assert result["groups"] == ["ring", "tree"]
    assert result["notes"][0].endswith("NCCL_ALGO=Ring -- applied")
    assert result["notes"][1].endswith("NCCL_ALGO=Tree -- applied")


@pytest.mark.parametrize("scenario", ["lazy", "bound"])
def test_every_plan_gives_the_gradients_of_ddps_default_allreduce_on_nccl(
    scenario: str, run: Any
) -> None:
    result, _ = run(scenario)
    assert len(result["errors"]) == 6 and max(result["errors"]) <= 1e-6, result["errors"]
    assert [label.split("/")[0] for _, label in result["plans"]] == [
        "ring",
        "tree",
        "halving_doubling",
    ]
    assert result["emulated"] == {"ring": [False], "tree": [False], "halving_doubling": [True]}
    # timed by CUDA events (read once the GPU reached them), one step per training step
    assert result["record_steps"] == list(range(6))
    assert all(0.0 <= s < 1.0 for s in result["seconds"]), result["seconds"]


def test_a_process_wide_ncclalgo_is_respected(run: Any) -> None:
    result, output = run("lazy", "Tree")
    phases = _phases(output)
    assert _algos(phases["start"]) and set(_algos(output.splitlines())) == {"Tree"}
    assert _algos(phases["groups"]) == [] and _inits(phases["groups"]) == 0
    assert output.count("WARNING NCCL_ALGO=Tree is set for the process") == 1
    assert result["groups"] == [] and result["env_after"] == "Tree"
    assert result["emulated"] == {"ring": [True], "tree": [True], "halving_doubling": [True]}
    assert max(result["errors"]) <= 1e-6
