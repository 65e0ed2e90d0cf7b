"""Per-algorithm NCCL groups, the parts that need no GPU: the environment scope, the mapping
from plan algorithms to ``NCCL_ALGO``, the order and environment of group creation, the
hook's decision (and notes) on NCCL, and that gloo is unchanged.

The GPU half (real NCCL communicators and what NCCL reports) is ``tests/gpu/test_nccl_groups.py``.
"""

from __future__ import annotations

import ctypes
import logging
import os

import pytest
import torch

from infermesh.train.hooks import MeshHook, MeshHookConfig, emulation_notes, mesh_hook, nccl_groups
from infermesh.train.hooks.nccl_groups import (
    NCCL_ALGO,
    NCCL_ALGO_ENV,
    build_algorithm_groups,
    nccl_algo,
    scoped_env,
)
from infermesh.train.planning import Algorithm, JobShape

VAR = "INFERMESH_TEST_SCOPED_ENV"
_libc = ctypes.CDLL(None)
_libc.getenv.restype = ctypes.c_char_p


def _c_getenv(name: str) -> str | None:
    """The variable as C code (NCCL's getenv) sees it."""
    value = _libc.getenv(name.encode())
    return None if value is None else value.decode()


@pytest.fixture
def unset_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VAR, raising=False)


def test_scoped_env_sets_the_variable_for_python_and_for_c_code(unset_var: None) -> None:
    with scoped_env(VAR, "Ring"):
        assert os.environ[VAR] == "Ring"
        assert _c_getenv(VAR) == "Ring"


def test_scoped_env_restores_the_previous_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "Tree")
    with scoped_env(VAR, "Ring"):
        pass
    assert os.environ[VAR] == "Tree"
    assert _c_getenv(VAR) == "Tree"


def test_scoped_env_leaves_an_unset_variable_unset(unset_var: None) -> None:
    with scoped_env(VAR, "Ring"):
        pass
    assert VAR not in os.environ
    assert _c_getenv(VAR) is None


def test_scoped_env_restores_the_environment_when_the_block_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(VAR, raising=False)
    with pytest.raises(RuntimeError, match="boom"), scoped_env(VAR, "Ring"):
        raise RuntimeError("boom")
    assert VAR not in os.environ and _c_getenv(VAR) is None

    monkeypatch.setenv(VAR, "Tree")
    with pytest.raises(RuntimeError, match="boom"), scoped_env(VAR, "Ring"):
        raise RuntimeError("boom")
    assert os.environ[VAR] == "Tree" and _c_getenv(VAR) == "Tree"


def test_ring_and_tree_map_to_ncclalgo_values_and_the_others_to_none() -> None:
    assert nccl_algo(Algorithm.RING) == "Ring"
    assert nccl_algo(Algorithm.TREE) == "Tree"
    for algorithm in (
        Algorithm.HALVING_DOUBLING,
        Algorithm.HIERARCHICAL,
        Algorithm.HIERARCHICAL_LEADER,
    ):
        assert nccl_algo(algorithm) is None
    assert list(NCCL_ALGO) == [Algorithm.RING, Algorithm.TREE]  # the creation order


@pytest.fixture
def fake_groups(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Replace the NCCL group creation; record ``NCCL_ALGO`` as each creation saw it."""
    seen: list[str | None] = []

    def fake(device: torch.device) -> str:
        seen.append(_c_getenv(NCCL_ALGO_ENV))
        return f"group-{len(seen)}"

    monkeypatch.setattr(nccl_groups, "_initialised_group", fake)
    monkeypatch.delenv(NCCL_ALGO_ENV, raising=False)
    return seen


def test_each_group_is_created_under_its_ncclalgo_in_a_fixed_order(
    fake_groups: list[str | None],
) -> None:
    # The order of the request does not matter: every rank creates ring, then tree.
    wanted = [Algorithm.HALVING_DOUBLING, Algorithm.TREE, Algorithm.HIERARCHICAL, Algorithm.RING]
    groups = build_algorithm_groups(wanted, torch.device("cpu"))
    assert fake_groups == ["Ring", "Tree"]
    assert groups == {Algorithm.RING: "group-1", Algorithm.TREE: "group-2"}
    assert NCCL_ALGO_ENV not in os.environ


def test_only_the_requested_algorithms_get_a_group(fake_groups: list[str | None]) -> None:
    groups = build_algorithm_groups([Algorithm.TREE], torch.device("cpu"))
    assert fake_groups == ["Tree"] and list(groups) == [Algorithm.TREE]
    assert build_algorithm_groups([Algorithm.HALVING_DOUBLING], torch.device("cpu")) == {}


def test_a_failed_group_creation_leaves_ncclalgo_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(device: torch.device) -> None:
        raise RuntimeError("NCCL error: unhandled system error")

    monkeypatch.setattr(nccl_groups, "_initialised_group", failing)
    monkeypatch.delenv(NCCL_ALGO_ENV, raising=False)
    with pytest.raises(RuntimeError, match="unhandled"):
        build_algorithm_groups([Algorithm.RING], torch.device("cpu"))
    assert NCCL_ALGO_ENV not in os.environ


def test_nccl_notes_say_ring_and_tree_are_applied_and_halving_doubling_emulated() -> None:
    notes = emulation_notes("nccl")
    assert (
        notes[0]
        == "ring: NCCL's all_reduce on a communicator created with NCCL_ALGO=Ring -- applied"
    )
    assert (
        notes[1]
        == "tree: NCCL's all_reduce on a communicator created with NCCL_ALGO=Tree -- applied"
    )
    assert notes[2].startswith("halving_doubling: NCCL has no such algorithm")
    assert "emulated" in notes[2]


def test_nccl_notes_say_why_an_algorithm_has_no_communicator() -> None:
    notes = emulation_notes("nccl", (), "NCCL_ALGO=Tree is set for the process")
    for note in notes[:2]:
        assert "no communicator of its own (NCCL_ALGO=Tree is set for the process)" in note
        assert note.endswith("recorded as emulated")


def test_gloo_notes_say_ring_and_the_two_level_steps_gloo_has_are_applied() -> None:
    ring, flat, hierarchical, rest = emulation_notes("gloo")
    assert ring == "ring: gloo's all_reduce (a ring) -- applied"
    assert flat.startswith("tree, halving_doubling: gloo has no such all_reduce")
    assert flat.endswith("recorded as emulated")
    assert hierarchical.startswith("hierarchical: intra-node reduce-scatter emulated")
    assert hierarchical.endswith("inter-node all-reduce and all-gather applied")
    assert rest == "hierarchical_leader, fusion, fp16/bf16, powersgd: applied"


# -- the hook on a one-rank gloo group -------------------------------------------------------


def _hook(config: MeshHookConfig | None = None) -> MeshHook:
    job = JobShape(nodes=1, gpus_per_node=1, grad_bytes=4096, bucket_bytes=1024)
    return MeshHook(job, config or MeshHookConfig(job="test"))


def test_on_gloo_no_groups_are_created_and_only_ring_is_applied(
    gloo_world: None, fake_groups: list[str | None]
) -> None:
    hook = _hook()
    assert fake_groups == [] and hook.algorithm_groups == {}
    assert hook.emulation_notes() == emulation_notes("gloo")
    assert hook._flat_group(Algorithm.RING) == (hook.pg, False)
    assert hook._flat_group(Algorithm.TREE) == (hook.pg, True)
    assert hook._flat_group(Algorithm.HALVING_DOUBLING) == (hook.pg, True)


def _as_nccl(hook: MeshHook) -> MeshHook:
    """The hook's NCCL decision, taken over the gloo group (the agreement runs on CPU)."""
    hook.backend = "nccl"
    hook.planner_config = hook.config.planner_config("nccl")
    hook._build_algorithm_groups(torch.device("cpu"))
    return hook


def test_on_nccl_ring_and_tree_run_on_their_groups_and_halving_doubling_on_the_model_group(
    gloo_world: None, fake_groups: list[str | None]
) -> None:
    hook = _as_nccl(_hook())
    assert fake_groups == ["Ring", "Tree"]
    assert hook._flat_group(Algorithm.RING) == ("group-1", False)
    assert hook._flat_group(Algorithm.TREE) == ("group-2", False)
    assert hook._flat_group(Algorithm.HALVING_DOUBLING) == (hook.pg, True)
    assert hook.emulation_notes() == emulation_notes("nccl")


def test_on_nccl_an_algorithm_the_config_excludes_gets_no_group(
    gloo_world: None, fake_groups: list[str | None]
) -> None:
    hook = _as_nccl(_hook(MeshHookConfig(job="test", algorithms=("ring", "hierarchical"))))
    assert fake_groups == ["Ring"]
    assert hook._flat_group(Algorithm.TREE) == (hook.pg, True)
    assert (
        "tree: no communicator of its own (not among the hook's algorithms)"
        in (hook.emulation_notes()[1])
    )


def test_a_process_wide_ncclalgo_is_respected_with_one_warning(
    gloo_world: None,
    fake_groups: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(NCCL_ALGO_ENV, "Tree")
    with caplog.at_level(logging.WARNING, logger=mesh_hook.__name__):
        hook = _as_nccl(_hook())
    assert fake_groups == [] and hook.algorithm_groups == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("NCCL_ALGO=Tree is set for the process")
    for algorithm in (Algorithm.RING, Algorithm.TREE, Algorithm.HALVING_DOUBLING):
        assert hook._flat_group(algorithm) == (hook.pg, True)
    assert (
        "no communicator of its own (NCCL_ALGO=Tree is set for the process)"
        in (hook.emulation_notes()[0])
    )
    assert os.environ[NCCL_ALGO_ENV] == "Tree"
