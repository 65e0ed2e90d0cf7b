"""The cell value types: request validation, slot arithmetic, job states, plan round trip."""

from __future__ import annotations

import json

import pytest

from infermesh.core.cell import JobStatus, NodeInfo, Placement, PlacementRefused, PlacementRequest
from infermesh.core.errors import InferMeshError, UsageError


def test_free_slots_are_slots_minus_used_and_never_negative() -> None:
    assert NodeInfo("a", "h", slots=8, used_slots=3).free_slots == 5
    assert NodeInfo("a", "h", slots=2, used_slots=5).free_slots == 0


def test_only_succeeded_failed_and_cancelled_jobs_are_terminal() -> None:
    terminal = {s for s in JobStatus if s.terminal}
    assert terminal == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"job_id": ""}, "needs a job id"),
        ({"nodes_min": 0}, "nodes_min is 0; it must be at least 1"),
        ({"nodes_min": 4, "nodes_max": 2}, "nodes_max 2 is below nodes_min 4"),
        ({"nproc_per_node": 0}, "nproc_per_node is 0"),
        ({"keep": ("a", "b", "a")}, "keep lists node(s) a more than once"),
    ],
)
def test_a_malformed_request_is_rejected_with_the_setting_to_change(
    kwargs: dict[str, object], words: str
) -> None:
    base: dict[str, object] = {"job_id": "j-1", "nodes_min": 1, "nodes_max": 2, "nproc_per_node": 1}
    with pytest.raises(UsageError) as info:
        PlacementRequest(**{**base, **kwargs})  # type: ignore[arg-type]
    assert words in str(info.value)


def test_a_placement_survives_a_json_round_trip_and_counts_its_ranks() -> None:
    plan = Placement("j-1", ("a", "b"), hosts=2, racks=1, notes=("x",), nproc_per_node=4)
    again = Placement.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert again.world_size == 8


def test_a_refusal_is_an_infermesh_error_whose_message_lists_the_first_reasons() -> None:
    reasons = [f"node-{i} draining" for i in range(10)]
    err = PlacementRefused("j-3", "4 nodes with 8 free slots", 3, reasons, {"draining": 10})
    assert isinstance(err, InferMeshError)
    text = str(err)
    assert text.startswith("job j-3 needs 4 nodes with 8 free slots; 3 match; node-0 draining;")
    assert "node-5 draining" in text and "node-6 draining" not in text
    assert text.endswith("and 4 more (in all: 10 draining)")
    assert err.reasons == reasons
