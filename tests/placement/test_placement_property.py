"""Invariants of plan_placement over many random fleets and requests (seeded, reproducible)."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from infermesh.core.cell import NodeInfo, NodeStatus, Placement, PlacementRefused, PlacementRequest
from infermesh.train.planning import plan_placement
from tests.placement._fleet import NOW

STATUSES = [NodeStatus.ALIVE] * 6 + [s for s in NodeStatus if s is not NodeStatus.ALIVE]


def random_fleet(rng: random.Random) -> list[NodeInfo]:
    nodes = []
    for cell in ["a", "b"][: rng.choice([1, 1, 2])]:
        for r in range(rng.randint(1, 5)):
            rack = "" if r == 0 and rng.random() < 0.2 else f"{cell}-r{r}"
            for h in range(rng.randint(1, 4)):
                host = f"{cell}-r{r}-h{h}"
                for n in range(rng.choice([1, 1, 2, 3])):
                    slots = rng.choice([2, 4, 8])
                    nodes.append(
                        NodeInfo(
                            node_id=f"{host}-n{n}",
                            hostname=host,
                            cell=cell,
                            rack=rack,
                            labels={"gpu": rng.choice(["h100", "a100"])},
                            slots=slots,
                            used_slots=rng.choice([0, 0, 0, 1, slots]),
                            status=rng.choice(STATUSES),
                        )
                    )
    rng.shuffle(nodes)
    return nodes


def random_request(rng: random.Random, nodes: list[NodeInfo]) -> PlacementRequest:
    ids = [n.node_id for n in nodes]
    n_min = rng.randint(1, 6)
    return PlacementRequest(
        job_id="j",
        nodes_min=n_min,
        nodes_max=rng.choice([n_min, n_min + rng.randint(0, 6), 10_000]),
        nproc_per_node=rng.choice([1, 2, 4, 8]),
        cell=rng.choice([None, None, "a", "b"]),
        constraints=rng.choice([{}, {}, {"gpu": "h100"}]),
        exclude=frozenset(rng.sample(ids, rng.randint(0, min(2, len(ids))))),
        keep=tuple(rng.sample(ids, rng.randint(0, min(4, len(ids))))) if rng.random() < 0.4 else (),
    )


def fits(node: NodeInfo, req: PlacementRequest) -> bool:
    """An independent statement of the filter."""
    return (
        node.status is NodeStatus.ALIVE
        and node.slots - node.used_slots >= req.nproc_per_node
        and all(node.labels.get(k) == v for k, v in req.constraints.items())
        and node.node_id not in req.exclude
        and (req.cell is None or node.cell == req.cell)
    )


def adjacent(seq: list[str]) -> bool:
    """True when equal values form one contiguous block each."""
    blocks = [v for i, v in enumerate(seq) if i == 0 or seq[i - 1] != v]
    return len(blocks) == len(set(seq))


def fewest_racks(capacities: list[int], k: int) -> int:
    total = 0
    for r, cap in enumerate(sorted(capacities, reverse=True), start=1):
        total += cap
        if total >= k:
            return r
    raise AssertionError("not enough capacity")


def check(plan: Placement, req: PlacementRequest, nodes: list[NodeInfo]) -> None:
    by_id = {n.node_id: n for n in nodes}
    chosen = [by_id[nid] for nid in plan.nodes]
    assert len(set(plan.nodes)) == len(plan.nodes)
    assert all(fits(n, req) for n in chosen)
    cells = {n.cell for n in chosen}
    assert len(cells) == 1
    (cell,) = cells
    matching = [n for n in nodes if fits(n, req) and n.cell == cell]
    assert req.nodes_min <= len(chosen) == min(req.nodes_max, len(matching))
    if req.cell is None:  # the chosen cell is never one with fewer matches, unless kept
        best = max(Counter(n.cell for n in nodes if fits(n, req)).values())
        assert len(matching) == best or any(by_id.get(k) in matching for k in req.keep)
    assert adjacent([n.rack for n in chosen])
    assert adjacent([f"{n.rack}/{n.hostname}" for n in chosen])
    assert plan.hosts == len({n.hostname for n in chosen})
    assert plan.racks == len({n.rack for n in chosen})
    kept = [k for k in req.keep if by_id.get(k) in matching]
    assert [k for k in plan.nodes if k in kept] == [k for k in kept if k in plan.nodes]
    assert set(kept[: len(chosen)]) <= set(plan.nodes)
    if not req.keep:
        per_rack = Counter(n.rack for n in matching)
        assert plan.racks == fewest_racks(list(per_rack.values()), len(chosen))


@pytest.mark.parametrize("seed", range(300))
def test_every_placement_of_a_random_fleet_keeps_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    nodes = random_fleet(rng)
    req = random_request(rng, nodes)
    try:
        plan = plan_placement(req, nodes, now=NOW)
    except PlacementRefused as err:
        per_cell = Counter(n.cell for n in nodes if fits(n, req))
        assert err.matching == max(per_cell.values(), default=0) < req.nodes_min
        assert sum(err.counts.values()) == len(nodes) - err.matching
        return
    check(plan, req, nodes)
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    assert plan_placement(req, shuffled, now=NOW) == plan


def test_on_small_fleets_the_rack_count_matches_exhaustive_search() -> None:
    rng = random.Random(1)
    checked = host_optimal = 0
    for _ in range(400):
        nodes = [n for n in random_fleet(rng) if n.cell == "a"]
        req = PlacementRequest("j", 1, rng.randint(1, 6), 1, cell="a")
        ok = [n for n in nodes if fits(n, req)]
        if not ok or len(ok) > 12:
            continue
        plan = plan_placement(req, nodes, now=NOW)
        best = min(
            (len({n.rack for n in c}), len({n.hostname for n in c}))
            for c in itertools.combinations(ok, len(plan.nodes))
        )
        assert plan.racks == best[0]
        checked += 1
        host_optimal += (plan.racks, plan.hosts) == best
    assert checked >= 100
    assert host_optimal / checked >= 0.99, (host_optimal, checked)  # greedy: exact in most cases
