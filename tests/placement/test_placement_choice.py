"""How many nodes the planner takes, which ones (packing) and in which rank order."""

from __future__ import annotations

import random

from infermesh.core.cell import NodeStatus, PlacementRequest
from infermesh.train.planning import format_placement, plan_placement
from tests.placement._fleet import NOW, grid, node


def request(n_min: int, n_max: int | None = None, nproc: int = 8, **kw: object) -> PlacementRequest:
    return PlacementRequest("j-1", n_min, n_max or n_min, nproc, **kw)  # type: ignore[arg-type]


def test_auto_takes_every_matching_node_up_to_the_maximum() -> None:
    nodes = grid(racks=2, hosts_per_rack=3)
    assert len(plan_placement(request(1, 100), nodes, now=NOW).nodes) == 6
    capped = plan_placement(request(1, 4), nodes, now=NOW)
    assert len(capped.nodes) == 4
    assert "chose 4 of 6 matching nodes (at most 4)" in capped.notes


def test_a_job_fills_one_rack_before_opening_another() -> None:
    nodes = grid(racks=3, hosts_per_rack=4)
    plan = plan_placement(request(4), nodes, now=NOW)
    assert plan.racks == 1 and plan.nodes == ("r0-h0", "r0-h1", "r0-h2", "r0-h3")
    assert plan_placement(request(5), nodes, now=NOW).racks == 2


def test_the_fewest_racks_come_from_the_largest_racks() -> None:
    # rack a: 3 free nodes, rack b: 5, rack c: 2 -> 6 nodes fit in b + a (two racks), not b + c.
    nodes = [node(f"a{i}", rack="a") for i in range(3)]
    nodes += [node(f"b{i}", rack="b") for i in range(5)]
    nodes += [node(f"c{i}", rack="c") for i in range(2)]
    plan = plan_placement(request(6), nodes, now=NOW)
    assert plan.racks == 2
    assert set(plan.nodes) >= {f"b{i}" for i in range(5)}
    # 7 nodes: b (5) then the rest fits in a or c; c is the smaller fit, leaving a whole.
    assert set(plan_placement(request(7), nodes, now=NOW).nodes) == {
        *(f"b{i}" for i in range(5)),
        "c0",
        "c1",
    }


def test_a_small_job_goes_to_the_rack_where_it_needs_fewest_hosts() -> None:
    # rack wide: 4 hosts of 1 node; rack dense: 1 host with 3 nodes. 3 nodes -> dense (1 host).
    nodes = [node(f"w{i}", rack="wide") for i in range(4)]
    nodes += [node(f"d{i}", host="big", rack="dense") for i in range(3)]
    plan = plan_placement(request(3), nodes, now=NOW)
    assert (plan.racks, plan.hosts) == (1, 1)
    assert plan.nodes == ("d0", "d1", "d2")


def test_nodes_sharing_a_host_are_packed_together() -> None:
    nodes = grid(racks=1, hosts_per_rack=3, nodes_per_host=2)
    plan = plan_placement(request(4), nodes, now=NOW)
    assert plan.hosts == 2
    assert plan.nodes == ("r0-h0-n0", "r0-h0-n1", "r0-h1-n0", "r0-h1-n1")


def test_inside_a_host_the_best_fitting_node_goes_first() -> None:
    nodes = [node("a", host="h", slots=8), node("b", host="h", slots=8, used=6)]
    assert plan_placement(request(1, nproc=2), nodes, now=NOW).nodes == ("b",)


def test_ranks_of_one_host_and_one_rack_are_adjacent() -> None:
    nodes = grid(racks=3, hosts_per_rack=2, nodes_per_host=2)
    random.Random(7).shuffle(nodes)
    plan = plan_placement(request(1, 100), nodes, now=NOW)
    racks = [nid.split("-")[0] for nid in plan.nodes]
    hosts = ["-".join(nid.split("-")[:2]) for nid in plan.nodes]
    for seq in (racks, hosts):
        blocks = [v for i, v in enumerate(seq) if i == 0 or seq[i - 1] != v]
        assert len(blocks) == len(set(seq)), seq
    assert plan.nodes[:4] == ("r0-h0-n0", "r0-h0-n1", "r0-h1-n0", "r0-h1-n1")


def test_names_sort_naturally_in_rank_order() -> None:
    nodes = [node(f"node-{i}", rack="") for i in (10, 2, 1)]
    assert plan_placement(request(3), nodes, now=NOW).nodes == ("node-1", "node-2", "node-10")


def test_the_same_snapshot_in_any_order_gives_the_same_placement() -> None:
    nodes = grid(racks=4, hosts_per_rack=3, nodes_per_host=2)
    first = plan_placement(request(7), nodes, now=NOW)
    for seed in range(20):
        shuffled = list(nodes)
        random.Random(seed).shuffle(shuffled)
        assert plan_placement(request(7), shuffled, now=NOW) == first


def test_kept_nodes_stay_and_keep_their_rank_order() -> None:
    nodes = grid(racks=2, hosts_per_rack=4)
    keep = ("r1-h2", "r1-h0")
    plan = plan_placement(request(3, keep=keep), nodes, now=NOW)
    assert plan.nodes[:2] == keep
    assert plan.nodes[2].startswith("r1-")  # grows inside the kept rack, not into r0
    assert plan.racks == 1
    assert "kept 2 of 2 nodes already running the job" in plan.notes


def test_a_restart_after_a_node_loss_keeps_the_survivors_in_order() -> None:
    nodes = grid(racks=1, hosts_per_rack=4)
    first = plan_placement(request(2, 3), nodes, now=NOW)
    assert first.nodes == ("r0-h0", "r0-h1", "r0-h2")
    lost = [
        node(
            n.node_id,
            n.hostname,
            n.rack,
            status=NodeStatus.DEAD,
            since=NOW - 5,
            reason="no heartbeat",
        )
        if n.node_id == "r0-h1"
        else n
        for n in nodes
    ]
    again = plan_placement(request(2, 3, keep=first.nodes), lost, now=NOW)
    assert again.nodes[:2] == ("r0-h0", "r0-h2")
    assert again.nodes[2] == "r0-h3"
    assert "left r0-h1: dead since 22:13:15 UTC, 5s ago (no heartbeat)" in again.notes
    shrunk = plan_placement(request(2, 3, keep=first.nodes), lost[:3], now=NOW)
    assert shrunk.nodes == ("r0-h0", "r0-h2")


def test_kept_nodes_beyond_the_maximum_are_left_in_kept_order() -> None:
    nodes = grid(racks=1, hosts_per_rack=4)
    plan = plan_placement(request(1, 2, keep=("r0-h3", "r0-h1", "r0-h0")), nodes, now=NOW)
    assert plan.nodes == ("r0-h3", "r0-h1")
    assert "left r0-h0: the job asks for at most 2 nodes" in plan.notes


def test_a_kept_node_that_left_the_cell_is_noted() -> None:
    plan = plan_placement(request(1, keep=("gone",)), [node("a")], now=NOW)
    assert plan.nodes == ("a",)
    assert "left gone: no longer in the cell" in plan.notes


def test_adjacency_wins_over_kept_order_when_they_disagree() -> None:
    nodes = grid(racks=2, hosts_per_rack=2)
    plan = plan_placement(request(3, keep=("r0-h0", "r1-h0", "r0-h1")), nodes, now=NOW)
    assert plan.nodes == ("r0-h0", "r0-h1", "r1-h0")


def test_the_dry_run_table_shows_ranks_hosts_racks_and_free_slots() -> None:
    nodes = [
        node("node-1", "host-a", "r1"),
        node("node-2", "host-a", "r1", used=2),
        node("node-3", "host-b", "", status=NodeStatus.DRAINING),
    ]
    plan = plan_placement(request(1, 4, nproc=4), nodes, now=NOW)
    assert format_placement(plan, nodes) == "\n".join(
        [
            "job j-1: 2 nodes x 4 = 8 ranks on 1 host in 1 rack",
            "node rank  ranks  node    host    rack  free slots",
            "0          0-3    node-1  host-a  r1    8/8",
            "1          4-7    node-2  host-a  r1    6/8",
            "note: skipped 1 node: 1 draining",
        ]
    )
    one = plan_placement(request(1, nproc=1), nodes, now=NOW)
    assert format_placement(one, []).splitlines()[1:] == [
        "node rank  ranks  node    host  rack  free slots",
        "0          0      node-2  ?     ?     ?",  # best fit: fewer free slots
        "note: chose 1 of 2 matching nodes (at most 1)",
        "note: skipped 1 node: 1 draining",
    ]


def test_a_growing_job_fills_its_kept_hosts_before_new_ones() -> None:
    nodes = grid(racks=1, hosts_per_rack=3, nodes_per_host=3)
    plan = plan_placement(request(3, keep=("r0-h2-n1",)), nodes, now=NOW)
    assert plan.nodes == ("r0-h2-n1", "r0-h2-n0", "r0-h2-n2")
    assert plan.hosts == 1


def test_a_kept_node_in_another_cell_than_the_job_is_left_with_a_note() -> None:
    nodes = [node("a", cell="east"), node("b", cell="west"), node("c", cell="west")]
    plan = plan_placement(request(1, 3, keep=("a", "b")), nodes, now=NOW)
    assert plan.nodes == ("a",)
    assert "left b: in cell 'west', the job runs in 'east'" in plan.notes
