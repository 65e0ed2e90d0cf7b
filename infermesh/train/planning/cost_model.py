"""Alpha-beta cost model of all-reduce, with compression and fusion windows.

A message of ``m`` bytes over a link costs ``alpha + m / B`` (latency plus size over
bandwidth). Steps of an algorithm that run at the same time on different links cost the
slowest of them. Ranks are node-contiguous; ``N`` nodes of ``g`` ranks, ``p = N * g``.

Flat algorithms over several nodes cross the inter-node links:

- **ring**: ``2(p-1)`` steps of ``n/p`` bytes. Each node's ring edge in and out crosses its
  NICs once; NCCL spreads its rings (channels) over every NIC, so a step costs
  ``max(alpha) + (n/p) / min(B_intra, B_node)`` where ``B_node`` is the node's total NIC
  bandwidth.
- **tree** (double binary, pipelined): ``2 ceil(log2 p)`` latency steps and about ``2n`` bytes
  through the slowest link: ``2 ceil(log2 p) max(alpha) + 2n / min(B_intra, B_node)``.
- **halving_doubling**: ``log2 p`` halving steps, partners at distance 1, 2, 4, ... (so the
  large early messages stay inside a node) with ``n/2, n/4, ...`` bytes, then the mirror
  doubling steps. A step whose partner is on another node shares the node's NICs among its
  ``g`` ranks. A world that is not a power of two adds two full-size exchange steps.

Two-level algorithms (need ``N > 1`` and ``g > 1``):

- **hierarchical**: intra-node ring reduce-scatter (``(g-1)`` steps of ``n/g``), ``g``
  concurrent inter-node ring all-reduces of ``n/g`` bytes sharing the node's NICs, intra-node
  ring all-gather.
- **hierarchical_leader**: intra-node reduce to one leader and broadcast back (each a
  reduce-scatter plus gather, ``2(g-1)`` steps of ``n/g``), one inter-node ring all-reduce of
  ``n`` bytes among leaders with the node's full NIC bandwidth.

**What runs, per backend.** :func:`collectives` lists the collectives the hook issues for
one all-reduce -- the group it records them under (``world``, ``intra``, ``inter``,
``leaders``), the bytes it records and their alpha-beta terms -- and :func:`allreduce_time` is
their sum. On gloo the hierarchical intra-node reduce-scatter is a full intra-node all-reduce
(``2(g-1)`` steps instead of ``g-1``) and tree and halving-doubling run as gloo's ring. The
same description turns measured per-group timings into link figures
(:mod:`~infermesh.train.planning.calibration`), so the model is fitted to what it prices.

Compression changes the bytes on the wire and adds compute: fp16/bf16 halve the bytes and
cost three passes over the fp32 buffer at memory bandwidth (read, write half, read back);
PowerSGD sends ``2 r / layer_width`` of the bytes in two all-reduces and costs about
``8 r`` flops per gradient element. A fusion window of ``w`` bytes makes ``k = ceil(n / w)``
collectives per step; with a known backward time ``b`` they overlap it and the exposed time is
``max(k T(n/k) - b (k-1)/k, T(n/k))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infermesh.train.planning.api import Algorithm, Backend, Compression, JobShape, PlanChoice
from infermesh.train.planning.links import LinkModel

__all__ = [
    "GROUPS",
    "Collective",
    "Term",
    "allreduce_time",
    "applicable",
    "collective_time",
    "collectives",
    "link_figures",
    "step_time",
]

GROUPS = ("world", "intra", "inter", "leaders")
"""The hook's collective groups, as it names them in its records."""


def applicable(algorithm: Algorithm, nodes: int, gpus_per_node: int) -> bool:
    """Two-level algorithms need several nodes with several ranks each; flat ones always run."""
    return not algorithm.two_level or (nodes > 1 and gpus_per_node > 1)


@dataclass(frozen=True)
class Term:
    """``messages`` latencies and ``wire_bytes`` sent in sequence over one link class.

    ``link`` is ``intra`` (inside a node), ``inter`` (a node's NICs, shared by ``share`` ranks
    at once) or ``world`` (both: each step costs the slower link's latency and bandwidth).
    """

    link: str
    messages: float
    wire_bytes: float
    share: int = 1


@dataclass(frozen=True)
class Collective:
    """One collective the hook issues: its group, the bytes it records and its cost terms."""

    group: str
    recorded_bytes: float
    terms: tuple[Term, ...]


def _world_link(nodes: int, gpus_per_node: int) -> str:
    if nodes == 1:
        return "intra"
    return "inter" if gpus_per_node == 1 else "world"


def collectives(
    algorithm: Algorithm,
    n_bytes: float,
    nodes: int,
    gpus_per_node: int,
    backend: Backend = Backend.NCCL,
) -> list[Collective]:
    """The collectives of one all-reduce of ``n_bytes`` as the hook runs them on ``backend``."""
    g, big_n = gpus_per_node, nodes
    p = big_n * g
    if p == 1 or n_bytes <= 0:
        return []
    n = float(n_bytes)
    flat = _world_link(big_n, g)
    if backend is Backend.GLOO and algorithm in (Algorithm.TREE, Algorithm.HALVING_DOUBLING):
        algorithm = Algorithm.RING  # gloo has one all-reduce: its ring
    if algorithm is Algorithm.RING:
        return [Collective("world", n, (Term(flat, 2 * (p - 1), 2 * (p - 1) * n / p),))]
    if algorithm is Algorithm.TREE:
        return [Collective("world", n, (Term(flat, 2 * math.ceil(math.log2(p)), 2 * n),))]
    if algorithm is Algorithm.HALVING_DOUBLING:
        p2 = 1 << (p.bit_length() - 1)
        terms = [] if p2 == p else [Term(flat, 2, 2 * n)]
        chunk, distance = n, 1
        while distance < p2:
            chunk /= 2
            if distance >= g and big_n > 1:  # partner on another node: g ranks share the NICs
                terms.append(Term(_world_link(big_n, g), 2, 2 * chunk, share=g))
            else:
                terms.append(Term("intra", 2, 2 * chunk))  # halving step and its mirror
            distance *= 2
        return [Collective("world", n, tuple(terms))]
    if not applicable(algorithm, big_n, g):
        raise ValueError(f"{algorithm.value} needs several nodes with several ranks each")
    shard = n / g
    gather = Collective("intra", shard, (Term("intra", g - 1, (g - 1) * shard),))
    if algorithm is Algorithm.HIERARCHICAL:
        if backend is Backend.GLOO:  # the reduce-scatter is an intra-node all-reduce
            scatter = Collective("intra", n, (Term("intra", 2 * (g - 1), 2 * (g - 1) * shard),))
        else:
            scatter = Collective("intra", n, (Term("intra", g - 1, (g - 1) * shard),))
        inter = Collective(
            "inter", shard, (Term("inter", 2 * (big_n - 1), 2 * (big_n - 1) * shard / big_n, g),)
        )
        return [scatter, inter, gather]
    # leader: reduce to a leader and broadcast back (each a reduce-scatter plus a gather)
    reduce = Collective("intra", n, (Term("intra", 2 * (g - 1), 2 * (g - 1) * shard),))
    leaders = Collective(
        "leaders", n, (Term("inter", 2 * (big_n - 1), 2 * (big_n - 1) * n / big_n),)
    )
    return [reduce, leaders, Collective("intra", n, reduce.terms)]


def link_figures(link: str, share: int, links: LinkModel) -> tuple[float, float]:
    """``(latency, bandwidth)`` of a term on ``link`` (``world``: the slower of the two)."""
    if link == "intra":
        return links.intra.latency_s, links.intra.bandwidth_Bps
    node = links.node_Bps / share
    if link == "inter":
        return links.inter.latency_s, node
    return (
        max(links.intra.latency_s, links.inter.latency_s),
        min(links.intra.bandwidth_Bps, node),
    )


def collective_time(collective: Collective, links: LinkModel) -> float:
    """Predicted seconds of one collective."""
    total = 0.0
    for term in collective.terms:
        alpha, bandwidth = link_figures(term.link, term.share, links)
        total += term.messages * alpha + term.wire_bytes / bandwidth
    return total


def allreduce_time(
    algorithm: Algorithm,
    n_bytes: float,
    nodes: int,
    gpus_per_node: int,
    links: LinkModel,
    backend: Backend = Backend.NCCL,
) -> float:
    """Predicted seconds of one all-reduce of ``n_bytes`` over ``nodes x gpus_per_node`` ranks."""
    return sum(
        collective_time(c, links)
        for c in collectives(algorithm, n_bytes, nodes, gpus_per_node, backend)
    )


def _compression(
    compression: Compression, n: float, job: JobShape, links: LinkModel, powersgd_rank: int
) -> tuple[float, float, int]:
    """``(wire bytes, compute seconds, all-reduces per window)`` of a window of ``n`` bytes."""
    if compression is Compression.NONE:
        return n, 0.0, 1
    if compression in (Compression.FP16, Compression.BF16):
        return n / 2, 3 * n / links.mem_Bps, 1
    ratio = min(1.0, 2 * powersgd_rank / job.layer_width)
    elements = n / 4
    return n * ratio, 8 * powersgd_rank * elements / links.flops, 2


def step_time(choice: PlanChoice, job: JobShape, links: LinkModel, powersgd_rank: int = 4) -> float:
    """Predicted exposed collective seconds per training step under ``choice``."""
    window = max(choice.fusion_bytes, job.bucket_bytes)
    k = max(1, math.ceil(job.grad_bytes / window))
    per_window = job.grad_bytes / k
    wire, compute, calls = _compression(choice.compression, per_window, job, links, powersgd_rank)
    one = compute + calls * allreduce_time(
        choice.algorithm, wire / calls, job.nodes, job.gpus_per_node, links, job.backend
    )
    total = k * one
    if job.backward_s <= 0 or k == 1:
        return total
    return max(total - job.backward_s * (k - 1) / k, one)
