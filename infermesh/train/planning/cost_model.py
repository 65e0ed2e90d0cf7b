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

Compression changes the bytes on the wire and adds compute: fp16/bf16 halve the bytes and
cost three passes over the fp32 buffer at memory bandwidth (read, write half, read back);
PowerSGD sends ``2 r / layer_width`` of the bytes in two all-reduces and costs about
``8 r`` flops per gradient element. A fusion window of ``w`` bytes makes ``k = ceil(n / w)``
collectives per step; with a known backward time ``b`` they overlap it and the exposed time is
``max(k T(n/k) - b (k-1)/k, T(n/k))``.
"""

from __future__ import annotations

import math

from infermesh.train.planning.api import Algorithm, Compression, JobShape, PlanChoice
from infermesh.train.planning.links import LinkModel

__all__ = ["allreduce_time", "applicable", "step_time"]


def applicable(algorithm: Algorithm, nodes: int, gpus_per_node: int) -> bool:
    """Two-level algorithms need several nodes with several ranks each; flat ones always run."""
    return not algorithm.two_level or (nodes > 1 and gpus_per_node > 1)


def _ring(steps: int, alpha: float, chunk: float, bandwidth: float) -> float:
    return steps * (alpha + chunk / bandwidth)


def allreduce_time(
    algorithm: Algorithm, n_bytes: float, nodes: int, gpus_per_node: int, links: LinkModel
) -> float:
    """Predicted seconds of one all-reduce of ``n_bytes`` over ``nodes x gpus_per_node`` ranks."""
    g, big_n = gpus_per_node, nodes
    p = big_n * g
    if p == 1 or n_bytes <= 0:
        return 0.0
    a_i, b_i = links.intra.latency_s, links.intra.bandwidth_Bps
    a_e, b_node = links.inter.latency_s, links.node_Bps
    if big_n == 1:
        a_max, b_min = a_i, b_i
    elif g == 1:
        a_max, b_min = a_e, b_node
    else:
        a_max, b_min = max(a_i, a_e), min(b_i, b_node)
    n = float(n_bytes)

    if algorithm is Algorithm.RING:
        return _ring(2 * (p - 1), a_max, n / p, b_min)
    if algorithm is Algorithm.TREE:
        return 2 * math.ceil(math.log2(p)) * a_max + 2 * n / b_min
    if algorithm is Algorithm.HALVING_DOUBLING:
        p2 = 1 << (p.bit_length() - 1)
        total = 0.0 if p2 == p else 2 * (a_max + n / b_min)
        chunk, distance = n, 1
        while distance < p2:
            chunk /= 2
            if distance >= g and big_n > 1:  # partner on another node: g ranks share the NICs
                step = a_e + chunk / min(b_i, b_node / g)
            else:
                step = a_i + chunk / b_i
            total += 2 * step  # halving step and its mirror doubling step
            distance *= 2
        return total
    if not applicable(algorithm, big_n, g):
        raise ValueError(f"{algorithm.value} needs several nodes with several ranks each")
    intra_phase = _ring(g - 1, a_i, n / g, b_i)
    if algorithm is Algorithm.HIERARCHICAL:
        inter = _ring(2 * (big_n - 1), a_e, n / g / big_n, b_node / g)
        return 2 * intra_phase + inter
    inter = _ring(2 * (big_n - 1), a_e, n / big_n, b_node)
    return 4 * intra_phase + inter


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
        choice.algorithm, wire / calls, job.nodes, job.gpus_per_node, links
    )
    total = k * one
    if job.backward_s <= 0 or k == 1:
        return total
    return max(total - job.backward_s * (k - 1) / k, one)
