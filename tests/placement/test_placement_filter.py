"""Which nodes the placement planner refuses, and how it says so."""

from __future__ import annotations

import pytest

from infermesh.core.cell import NodeStatus, PlacementRefused, PlacementRequest
from infermesh.train.planning import explain_refusal, plan_placement
from tests.placement._fleet import NOW, node


def request(
    n_min: int = 1, n_max: int | None = None, nproc: int = 8, **kw: object
) -> PlacementRequest:
    return PlacementRequest("j-3", n_min, n_max or n_min, nproc, **kw)  # type: ignore[arg-type]


def refusal(req: PlacementRequest, nodes: list) -> PlacementRefused:  # type: ignore[type-arg]
    with pytest.raises(PlacementRefused) as info:
        plan_placement(req, nodes, now=NOW)
    return info.value


@pytest.mark.parametrize(
    ("status", "word"),
    [
        (NodeStatus.SUSPECT, "suspect"),
        (NodeStatus.DEAD, "dead"),
        (NodeStatus.DRAINING, "draining"),
        (NodeStatus.QUARANTINED, "quarantined"),
    ],
)
def test_only_alive_nodes_are_chosen_and_each_other_state_is_named(
    status: NodeStatus, word: str
) -> None:
    nodes = [node("node-1"), node("node-2", status=status)]
    plan = plan_placement(request(1, 2), nodes, now=NOW)
    assert plan.nodes == ("node-1",)
    assert f"skipped 1 node: 1 {word}" in plan.notes
    err = refusal(request(2), nodes)
    assert err.reasons == [f"node-2 {word}"]
    assert err.counts == {word: 1}


def test_a_quarantined_node_is_reported_with_its_time_age_and_reason() -> None:
    nodes = [
        node("node-7", status=NodeStatus.QUARANTINED, since=NOW - 250, reason="xid 79 on gpu 2"),
        node("node-9", status=NodeStatus.DRAINING),
        node("node-2", used=4),
        node("node-1"),
        node("node-3"),
        node("node-4"),
    ]
    err = refusal(request(4), nodes)
    assert str(err) == (
        "job j-3 needs 4 nodes with 8 free slots; 3 match; "
        "node-7 quarantined since 22:09:10 UTC, 4m ago (xid 79 on gpu 2); "
        "node-9 draining; node-2 has 4 free slots of 8"
    )
    assert err.matching == 3


def test_a_status_older_than_a_day_shows_its_date() -> None:
    nodes = [node("node-1", status=NodeStatus.DEAD, since=NOW - 3 * 86400)]
    assert refusal(request(1), nodes).reasons == [
        "node-1 dead since 2023-11-11 22:13:20 UTC, 3d ago"
    ]


def test_a_node_without_enough_free_slots_is_skipped() -> None:
    nodes = [node("a", slots=8, used=4), node("b", slots=4), node("c", slots=8)]
    plan = plan_placement(request(1, 3, nproc=5), nodes, now=NOW)
    assert plan.nodes == ("c",)
    assert refusal(request(2, nproc=5), nodes).reasons == [
        "a has 4 free slots of 8",
        "b has 4 free slots of 4",
    ]


def test_label_constraints_must_all_match() -> None:
    nodes = [
        node("a", labels={"gpu": "h100", "ib": "yes"}),
        node("b", labels={"gpu": "a100", "ib": "yes"}),
        node("c", labels={"ib": "yes"}),
    ]
    req = request(1, 3, constraints={"gpu": "h100", "ib": "yes"})
    assert plan_placement(req, nodes, now=NOW).nodes == ("a",)
    err = refusal(request(2, constraints={"gpu": "h100"}), nodes)
    assert err.reasons == ["b has gpu=a100 (wants gpu=h100)", "c has no label gpu (wants gpu=h100)"]
    assert "needs 2 nodes with 8 free slots and labels gpu=h100" in str(err)


def test_nodes_of_another_cell_are_skipped_when_a_cell_is_named() -> None:
    nodes = [node("a", cell="east"), node("b", cell="west"), node("c", cell="east")]
    plan = plan_placement(request(1, 3, cell="east"), nodes, now=NOW)
    assert plan.nodes == ("a", "c")
    err = refusal(request(3, cell="east"), nodes)
    assert err.reasons == ["b is in cell 'west', not 'east'"]
    assert "in cell 'east'" in err.need


def test_without_a_named_cell_the_job_stays_in_the_cell_with_most_matches() -> None:
    nodes = [node("a", cell="west"), node("b", cell="east"), node("c", cell="east")]
    plan = plan_placement(request(1, 3), nodes, now=NOW)
    assert plan.nodes == ("b", "c")
    assert "cell 'west' has 1 matching node too (a job runs in one cell; chose 'east')" in (
        plan.notes
    )
    err = refusal(request(3), nodes)
    assert err.matching == 2
    assert err.counts == {"other cell": 1}


def test_excluded_nodes_are_not_chosen() -> None:
    nodes = [node("a"), node("b")]
    assert plan_placement(request(1, 2, exclude=frozenset({"a"})), nodes, now=NOW).nodes == ("b",)
    assert refusal(request(2, exclude=frozenset({"a"})), nodes).reasons == ["a excluded by the job"]


def test_a_node_gets_one_reason_the_first_that_applies() -> None:
    down = node("a", status=NodeStatus.DRAINING, used=8, labels={"gpu": "a100"})
    assert refusal(request(1, constraints={"gpu": "h100"}), [down]).reasons == ["a draining"]


def test_an_empty_or_too_small_cell_says_how_many_nodes_it_has() -> None:
    assert refusal(request(1), []).reasons == ["the cell has 0 nodes"]
    err = refusal(request(3), [node("a"), node("b")])
    assert str(err) == "job j-3 needs 3 nodes with 8 free slots; 2 match; the cell has 2 nodes"


def test_the_message_lists_health_before_slots_and_caps_long_lists() -> None:
    nodes = [node(f"n{i}", used=8) for i in range(20)]
    nodes.append(node("z", status=NodeStatus.QUARANTINED))
    err = refusal(request(1), nodes)
    assert err.reasons[:3] == [
        "z quarantined",
        "n0 has 0 free slots of 8",
        "n1 has 0 free slots of 8",
    ]
    assert str(err).endswith("and 15 more (in all: 1 quarantined, 20 too few free slots)")
    full = explain_refusal(err)
    lines = full.splitlines()
    assert lines[0] == "job j-3 needs 1 node with 8 free slots; 0 match"
    assert lines[1] == "not matching: 1 quarantined, 20 too few free slots"
    assert len(lines) == 2 + 21 and lines[-1] == "  n19 has 0 free slots of 8"


def test_a_range_request_says_at_least_its_minimum() -> None:
    assert refusal(request(2, 5, nproc=1), [node("a")]).need == "at least 2 nodes with 1 free slot"


def test_a_snapshot_with_a_node_twice_is_rejected() -> None:
    with pytest.raises(ValueError, match="node id 'a' appears twice"):
        plan_placement(request(1), [node("a"), node("a")], now=NOW)
