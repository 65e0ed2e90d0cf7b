"""``plan_placement``: which nodes run a job, and in which rank order (a pure function).

Three steps over a snapshot of the cell's nodes:

1. **Filter.** A node is a candidate when it is not excluded by the request, is in the
   request's cell, is ALIVE (SUSPECT, DEAD, DRAINING and QUARANTINED nodes are skipped), has
   every requested label and has ``nproc_per_node`` free slots. Each skipped node gets one
   reason, the first that applies in that order. Without a requested cell the job runs in
   one cell: the cell of its kept nodes, else the cell with the most candidates.
2. **Choose** ``min(nodes_max, candidates)`` nodes (refused below ``nodes_min``): first the
   kept nodes still healthy (in their old order), then pack the rest: other nodes on the kept
   nodes' hosts, then other hosts of the kept nodes' racks, then as few new racks as possible
   (largest first until one rack can hold the rest; of the racks that can, the one that needs
   the fewest hosts, then the smallest). Inside a rack the same rule picks hosts; inside a
   host, nodes with the fewest free slots go first (best fit), then by name.
3. **Order ranks** so that the nodes of one rack, and inside it of one host, are adjacent.
   Racks, hosts and nodes holding kept nodes come first, in the kept order; the rest follow
   by name (names compare naturally: ``node-2`` before ``node-10``). Adjacency wins over the
   kept order when the two disagree.

Every tie is broken by name, so the same snapshot (in any order) gives the same placement.
"""

from __future__ import annotations

import bisect
import itertools
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from infermesh.core.cell import (
    NodeInfo,
    NodeStatus,
    Placement,
    PlacementRefused,
    PlacementRequest,
)

__all__ = ["explain_refusal", "format_placement", "plan_placement"]

# Why a node was skipped, in the order reasons are listed.
QUARANTINED, DEAD, SUSPECT, DRAINING = "quarantined", "dead", "suspect", "draining"
SLOTS, LABELS, OTHER_CELL, EXCLUDED = (
    "too few free slots",
    "labels differ",
    "other cell",
    "excluded",
)
CAUSES = (QUARANTINED, DEAD, SUSPECT, DRAINING, SLOTS, LABELS, OTHER_CELL, EXCLUDED)
_CAUSE_OF_STATUS = {
    NodeStatus.QUARANTINED: QUARANTINED,
    NodeStatus.DEAD: DEAD,
    NodeStatus.SUSPECT: SUSPECT,
    NodeStatus.DRAINING: DRAINING,
}
_INF = float("inf")


@dataclass(frozen=True, slots=True)
class _Skip:
    node_id: str  # or "cell NAME" for a whole cell's candidates (count of them)
    cause: str
    text: str
    count: int = 1


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[object, ...], str]:
    """Sort key where digit runs compare as numbers: ``node-2`` < ``node-10``."""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _status_text(node: NodeInfo, now: float) -> str:
    text = f"{node.node_id} {node.status.value.lower()}"
    if node.status_since > 0:
        fmt = "%H:%M:%S" if now - node.status_since < 86400 else "%Y-%m-%d %H:%M:%S"
        stamp = time.strftime(fmt, time.gmtime(node.status_since))
        text += f" since {stamp} UTC, {_age(now - node.status_since)} ago"
    if node.status_reason:
        text += f" ({node.status_reason})"
    return text


def _check(node: NodeInfo, request: PlacementRequest, now: float) -> _Skip | None:
    """The first reason ``node`` cannot take the job, or None when it can."""
    nid = node.node_id
    if nid in request.exclude:
        return _Skip(nid, EXCLUDED, f"{nid} excluded by the job")
    if request.cell is not None and node.cell != request.cell:
        return _Skip(nid, OTHER_CELL, f"{nid} is in cell {node.cell!r}, not {request.cell!r}")
    if node.status is not NodeStatus.ALIVE:
        return _Skip(nid, _CAUSE_OF_STATUS[node.status], _status_text(node, now))
    for key, want in sorted(request.constraints.items()):
        have = node.labels.get(key)
        if have != want:
            has = f"has {key}={have}" if have is not None else f"has no label {key}"
            return _Skip(nid, LABELS, f"{nid} {has} (wants {key}={want})")
    if node.free_slots < request.nproc_per_node:
        return _Skip(nid, SLOTS, f"{nid} has {node.free_slots} free slots of {node.slots}")
    return None


def _need(request: PlacementRequest) -> str:
    n = request.nodes_min
    count = f"{n} node{'s' * (n != 1)}"
    if request.nodes_max > n:
        count = f"at least {count}"
    text = f"{count} with {request.nproc_per_node} free slot{'s' * (request.nproc_per_node != 1)}"
    if request.constraints:
        labels = ",".join(f"{k}={v}" for k, v in sorted(request.constraints.items()))
        text += f" and labels {labels}"
    if request.cell is not None:
        text += f" in cell {request.cell!r}"
    return text


def _node_order(node: NodeInfo) -> tuple[int, tuple[tuple[object, ...], str]]:
    """Inside a host: best fit (fewest free slots) first, then by name."""
    return node.free_slots, natural_key(node.node_id)


@dataclass(slots=True)
class _Host:
    name: str
    nodes: list[NodeInfo]  # in no particular order: see first()

    @property
    def cap(self) -> int:
        return len(self.nodes)

    def first(self, m: int) -> list[NodeInfo]:
        """The ``m`` nodes to take from this host (all of them, or the best fits)."""
        return self.nodes if m >= self.cap else sorted(self.nodes, key=_node_order)[:m]


@dataclass(slots=True)
class _Rack:
    name: str
    hosts: list[_Host]
    prefix: list[int]  # running totals of host capacities, largest first

    @property
    def cap(self) -> int:
        return self.prefix[-1]


def _largest_first(hosts: Iterable[_Host]) -> list[_Host]:
    return sorted(hosts, key=lambda h: (-h.cap, natural_key(h.name)))


def _take_hosts(hosts: Sequence[_Host], k: int) -> list[NodeInfo]:
    """``k`` nodes from as few hosts as possible: whole hosts, largest first, until one host
    can hold the rest; then the smallest host that can (best fit)."""
    order = _largest_first(hosts)
    out: list[NodeInfo] = []
    i = 0
    while k > 0:
        if order[i].cap < k:
            out.extend(order[i].nodes)
            k -= order[i].cap
            i += 1
            continue
        j = i
        while j + 1 < len(order) and order[j + 1].cap >= k:
            j += 1
        smallest = order[j].cap
        while j > i and order[j - 1].cap == smallest:
            j -= 1
        out.extend(order[j].first(k))
        k = 0
    return out


def _take_racks(racks: Sequence[_Rack], k: int) -> list[NodeInfo]:
    """``k`` nodes from as few racks as possible, then as few hosts (see the module doc).

    The fewest racks are ``r``: the largest racks, counted until they hold ``k``. The ``r - 1``
    largest are taken; the last one is, of the racks that complete them, the one that needs
    the fewest hosts (then the smallest, then by name). Hosts are then picked from all ``r``
    racks together; every one of them gets a node, since ``r - 1`` racks cannot hold ``k``.
    """
    order = sorted(racks, key=lambda r: (-r.cap, len(r.hosts), natural_key(r.name)))
    total, count = 0, 0
    while total < k:
        total += order[count].cap
        count += 1
    base = order[: count - 1]
    rest = k - sum(rack.cap for rack in base)
    base_prefix = list(
        itertools.accumulate(sorted((h.cap for r in base for h in r.hosts), reverse=True))
    )
    fits = list(itertools.takewhile(lambda r: r.cap >= rest, order[count - 1 :]))
    last = min(
        fits,
        key=lambda r: (_hosts_needed(base_prefix, r.prefix, k), r.cap, natural_key(r.name)),
    )
    return _take_hosts([h for rack in [*base, last] for h in rack.hosts], k)


def _hosts_needed(prefix_a: list[int], prefix_b: list[int], k: int) -> int:
    """Fewest hosts holding ``k`` nodes from two host sets, each given as the running totals of
    its host capacities, largest first (the best split takes a top run of each)."""
    best = len(prefix_a) + len(prefix_b) + 1
    for j in range(len(prefix_b) + 1):
        got = prefix_b[j - 1] if j else 0
        if got >= k:
            return min(best, j)
        if prefix_a and prefix_a[-1] >= k - got:
            best = min(best, j + bisect.bisect_left(prefix_a, k - got) + 1)
    return best


def _pack(candidates: list[NodeInfo], k: int, kept: list[NodeInfo]) -> list[NodeInfo]:
    """Choose ``k`` of ``candidates`` (none of them kept), packing around the kept nodes."""
    if k >= len(candidates):
        return candidates
    kept_hosts = {(n.rack, n.hostname) for n in kept}
    kept_racks = {n.rack for n in kept}
    by_host: dict[tuple[str, str], list[NodeInfo]] = defaultdict(list)
    for node in candidates:
        by_host[(node.rack, node.hostname)].append(node)
    hosts = {key: _Host(key[1], nodes) for key, nodes in by_host.items()}
    out: list[NodeInfo] = []
    # 1. More nodes on hosts already running the job: no new host, no new rack.
    host_order = dict.fromkeys((n.rack, n.hostname) for n in kept)
    for key in host_order:
        if key in hosts:
            out.extend(hosts[key].first(k - len(out)))
    if len(out) == k:
        return out
    # 2. Other hosts of racks already running the job: no new rack.
    same_rack = [h for key, h in hosts.items() if key[0] in kept_racks and key not in kept_hosts]
    free_there = sum(h.cap for h in same_rack)
    if free_there >= k - len(out):
        return out + _take_hosts(same_rack, k - len(out))
    out += [node for host in same_rack for node in host.nodes]
    # 3. New racks.
    rack_hosts: dict[str, list[_Host]] = defaultdict(list)
    for key, host in hosts.items():
        if key[0] not in kept_racks:
            rack_hosts[key[0]].append(host)
    racks = []
    for name, members in rack_hosts.items():
        prefix = list(itertools.accumulate(sorted((h.cap for h in members), reverse=True)))
        racks.append(_Rack(name, members, prefix))
    return out + _take_racks(racks, k - len(out))


def _rank_order(chosen: list[NodeInfo], keep: Sequence[str]) -> list[NodeInfo]:
    pos = {nid: i for i, nid in enumerate(keep)}
    rack_first: dict[str, float] = {}
    host_first: dict[tuple[str, str], float] = {}
    for node in chosen:
        p = pos.get(node.node_id, _INF)
        rack_first[node.rack] = min(rack_first.get(node.rack, _INF), p)
        host = (node.rack, node.hostname)
        host_first[host] = min(host_first.get(host, _INF), p)

    rack_key = {rack: natural_key(rack) for rack in rack_first}
    host_key = {host: natural_key(host[1]) for host in host_first}

    def key(node: NodeInfo) -> tuple[object, ...]:
        host = (node.rack, node.hostname)
        return (
            rack_first[node.rack],
            rack_key[node.rack],
            host_first[host],
            host_key[host],
            pos.get(node.node_id, _INF),
            natural_key(node.node_id),
        )

    return sorted(chosen, key=key)


def _counts(skips: Iterable[_Skip]) -> dict[str, int]:
    counted = Counter(s.cause for s in skips)
    return {cause: counted[cause] for cause in CAUSES if counted[cause]}


def plan_placement(
    request: PlacementRequest, nodes: Iterable[NodeInfo], *, now: float
) -> Placement:
    """Place ``request`` on ``nodes`` (a snapshot); raise :class:`PlacementRefused` if it cannot.

    ``now`` (seconds since the epoch) only dates the reasons ("quarantined since 12:03:11
    UTC, 4m ago"). The result lists the chosen nodes in rank order.
    """
    snapshot: dict[str, NodeInfo] = {}
    for node in nodes:
        if node.node_id in snapshot:
            raise ValueError(f"node id {node.node_id!r} appears twice in the node snapshot")
        snapshot[node.node_id] = node

    skips: list[_Skip] = []
    by_cell: dict[str, list[NodeInfo]] = defaultdict(list)
    for node in snapshot.values():
        skip = _check(node, request, now)
        if skip is None:
            by_cell[node.cell].append(node)
        else:
            skips.append(skip)
    cell = _choose_cell(request, by_cell)
    candidates = by_cell.get(cell, [])
    for other in by_cell:
        if other != cell:  # only without request.cell: the job runs in one cell
            n = len(by_cell[other])
            text = (
                f"cell {other!r} has {n} matching node{'s' * (n != 1)} too "
                f"(a job runs in one cell; chose {cell!r})"
            )
            skips.append(_Skip(f"cell {other}", OTHER_CELL, text, n))
    counted: Counter[str] = Counter()
    for skip in skips:
        counted[skip.cause] += skip.count
    counts = {cause: counted[cause] for cause in CAUSES if counted[cause]}

    if len(candidates) < request.nodes_min:
        skips.sort(key=lambda s: (CAUSES.index(s.cause), natural_key(s.node_id)))
        reasons = [s.text for s in skips]
        if len(snapshot) < request.nodes_min:
            reasons.insert(0, f"the cell has {len(snapshot)} node{'s' * (len(snapshot) != 1)}")
        raise PlacementRefused(request.job_id, _need(request), len(candidates), reasons, counts)

    target = min(request.nodes_max, len(candidates))
    candidate_ids = {n.node_id for n in candidates}
    kept = [snapshot[nid] for nid in request.keep if nid in candidate_ids][:target]
    kept_ids = {n.node_id for n in kept}
    rest = [n for n in candidates if n.node_id not in kept_ids]
    chosen = kept + _pack(rest, target - len(kept), kept)
    ordered = _rank_order(chosen, request.keep)

    notes = _notes(request, snapshot, skips, kept, len(candidates), target, counts, cell)
    return Placement(
        job_id=request.job_id,
        nodes=tuple(n.node_id for n in ordered),
        hosts=len({n.hostname for n in ordered}),
        racks=len({n.rack for n in ordered}),
        notes=tuple(notes),
        nproc_per_node=request.nproc_per_node,
    )


def _choose_cell(request: PlacementRequest, by_cell: dict[str, list[NodeInfo]]) -> str:
    """The requested cell; else the cell of the first kept candidate; else the cell with the
    most candidates (ties by name)."""
    if request.cell is not None:
        return request.cell
    cell_of = {n.node_id: cell for cell, members in by_cell.items() for n in members}
    for nid in request.keep:
        if nid in cell_of:
            return cell_of[nid]
    if not by_cell:
        return ""
    return min(by_cell, key=lambda c: (-len(by_cell[c]), natural_key(c)))


def _notes(
    request: PlacementRequest,
    snapshot: dict[str, NodeInfo],
    skips: list[_Skip],
    kept: list[NodeInfo],
    matching: int,
    target: int,
    counts: dict[str, int],
    cell: str,
) -> list[str]:
    notes: list[str] = []
    if request.keep:
        notes.append(f"kept {len(kept)} of {len(request.keep)} nodes already running the job")
        reason_of = {s.node_id: s.text for s in skips}
        kept_ids = {n.node_id for n in kept}
        for nid in request.keep:
            if nid in kept_ids:
                continue
            if nid not in snapshot:
                notes.append(f"left {nid}: no longer in the cell")
            elif nid in reason_of:  # every reason starts with the node id
                notes.append(f"left {nid}: {reason_of[nid][len(nid) + 1 :]}")
            elif snapshot[nid].cell != cell:
                notes.append(
                    f"left {nid}: in cell {snapshot[nid].cell!r}, the job runs in {cell!r}"
                )
            else:
                notes.append(f"left {nid}: the job asks for at most {request.nodes_max} nodes")
    if target < matching:
        notes.append(f"chose {target} of {matching} matching nodes (at most {request.nodes_max})")
    skipped = {cause: n for cause, n in counts.items() if cause != OTHER_CELL}
    if skipped:
        total = sum(skipped.values())
        detail = ", ".join(f"{n} {cause}" for cause, n in skipped.items())
        notes.append(f"skipped {total} node{'s' * (total != 1)}: {detail}")
    if request.cell is None:  # then every OTHER_CELL skip stands for a whole cell
        others = [s for s in skips if s.cause == OTHER_CELL]
        notes += [s.text for s in sorted(others, key=lambda s: natural_key(s.node_id))]
    return notes


def format_placement(placement: Placement, nodes: Iterable[NodeInfo]) -> str:
    """A table for people (``--dry-run``): node rank, worker ranks, node, host, rack, slots."""
    info = {n.node_id: n for n in nodes}
    per = placement.nproc_per_node
    n_nodes = len(placement.nodes)
    header = (
        f"job {placement.job_id}: {n_nodes} node{'s' * (n_nodes != 1)} x {per} = "
        f"{placement.world_size} ranks on {placement.hosts} host"
        f"{'s' * (placement.hosts != 1)} in {placement.racks} rack{'s' * (placement.racks != 1)}"
    )
    rows = [("node rank", "ranks", "node", "host", "rack", "free slots")]
    for i, nid in enumerate(placement.nodes):
        ranks = f"{i * per}" if per == 1 else f"{i * per}-{(i + 1) * per - 1}"
        node = info.get(nid)
        if node is None:
            rows.append((str(i), ranks, nid, "?", "?", "?"))
        else:
            free = f"{node.free_slots}/{node.slots}"
            rows.append((str(i), ranks, nid, node.hostname, node.rack or "-", free))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [header]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    lines += [f"note: {note}" for note in placement.notes]
    return "\n".join(lines)


def explain_refusal(error: PlacementRefused) -> str:
    """Every reason of a refusal, one per line (``str(error)`` shows only the first few)."""
    lines = [f"job {error.job_id} needs {error.need}; {error.matching} match"]
    if error.counts:
        lines.append("not matching: " + ", ".join(f"{n} {c}" for c, n in error.counts.items()))
    lines += [f"  {reason}" for reason in error.reasons]
    return "\n".join(lines)
