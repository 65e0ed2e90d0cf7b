"""Link figures fitted from measured collectives: one path for the hook's and the cell's figures.

The cost model (:mod:`~infermesh.train.planning.cost_model`) prices each collective the hook
runs as ``messages * alpha + wire_bytes / B`` on a link class. :class:`LinkCalibration` takes
what was measured and fits the latency and bandwidth of each link class (``intra``: between
ranks of a node; ``inter``: a node's NICs) so that every plan's prediction, including plans
that never ran, uses measured link figures. It reads two kinds of input:

- **timings** (:meth:`LinkCalibration.add_timing`): ``calls`` collectives of one group
  (``world``, ``intra``, ``inter``, ``leaders``) under one algorithm took ``seconds`` for
  ``nbytes`` recorded bytes -- what the MeshHook times per step. The model's description of
  that algorithm (:func:`~infermesh.train.planning.cost_model.collectives`) says which
  latencies and wire bytes those collectives cost, so each timing is one linear equation in
  ``(alpha, 1/B)`` of its link class. A ``world`` collective crosses both classes; it is an
  equation of the slower one (by the current fit).
- **bandwidths** (:meth:`LinkCalibration.add_bandwidth`): a measured bandwidth of a link class,
  such as ``comm.link_bandwidth_bytes_per_s{link=intra|inter|world}`` from the cell's signal
  plane; one equation ``1/B = 1/figure`` (``world``: of the slower class).

The fit is least squares over the recent equations, each relative to its input's mean, with
a weak pull towards the profile's figures (the prior): what the data determine follows the
data, what they do not (for instance the latency, when every message has the same size) stays
at the profile's figure. Figures may not fall below ``1/1000`` of the profile's (a latency or
an inverse bandwidth cannot be negative). Pure: standard library only.

Bad input is not fitted: a timing or bandwidth that is not a positive finite number is
ignored and counted by reason in :attr:`LinkCalibration.ignored` (logged once per reason); an
unknown group or link, or a group the algorithm does not run, is a :class:`UsageError` that
names the known ones.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, replace

from infermesh.core.errors import UsageError
from infermesh.train.planning.api import Algorithm, JobShape, format_bytes
from infermesh.train.planning.cost_model import GROUPS, Collective, collectives, link_figures
from infermesh.train.planning.links import Link, LinkModel

logger = logging.getLogger(__name__)

__all__ = ["LINKS", "LinkCalibration", "measured_links"]

LINKS = ("intra", "inter", "world")
"""Link names a measured bandwidth may carry (the signal plane's ``link`` label)."""

# Unknowns, each relative to the profile: alpha_intra, 1/B_intra, alpha_inter, 1/B_node.
_A_INTRA, _B_INTRA, _A_INTER, _B_INTER = range(4)
_FLOOR = 1e-3
_ITERATIONS = 3  # re-attribute world equations to the slower class after each fit


@dataclass(frozen=True)
class _Timing:
    algorithm: Algorithm
    group: str
    nbytes: float
    seconds: float
    calls: int


class LinkCalibration:
    """Measured collectives and bandwidths of one job; :meth:`fit` returns its link figures.

    :param prior: the link profile the fit starts from (and falls back to without data).
    :param job: the job's shape and backend: which collectives each algorithm runs.
    :param history: equations kept per (algorithm, group) and per measured link; older ones
        are dropped, so the fit follows the links as they change.
    :param prior_weight: pull towards the prior, against the mean squared relative error of
        the equations (small: the data decide whatever they determine).
    """

    def __init__(
        self,
        prior: LinkModel,
        job: JobShape,
        *,
        history: int = 200,
        prior_weight: float = 1e-8,
    ) -> None:
        if history < 1:
            raise UsageError(f"history must be >= 1, got {history}")
        if not (math.isfinite(prior_weight) and prior_weight > 0):
            raise UsageError(f"prior_weight must be a positive number, got {prior_weight}")
        self.prior, self.job = prior, job
        self.history, self.prior_weight = history, prior_weight
        self._timings: dict[tuple[Algorithm, str], deque[_Timing]] = {}
        self._bandwidths: dict[str, deque[float]] = {}
        self.ignored: Counter[str] = Counter()
        """Inputs left out of the fit, by reason."""

    # -- input ------------------------------------------------------------------------------

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] += 1
        if self.ignored[reason] == 1:
            logger.warning("link calibration: ignored %s (later ones counted only)", reason)

    def add_timing(
        self, algorithm: Algorithm, group: str, nbytes: float, seconds: float, calls: int = 1
    ) -> None:
        """``calls`` collectives of ``group`` under ``algorithm``: ``nbytes`` in ``seconds``."""
        if group not in GROUPS:
            raise UsageError(f"unknown collective group {group!r}; known: {', '.join(GROUPS)}")
        ran = {c.group for c in self._collectives(algorithm, 1.0)}
        if group not in ran:
            raise UsageError(
                f"{algorithm.value} on {self.job.nodes} node(s) x {self.job.gpus_per_node} "
                f"rank(s) runs no {group!r} collective; its groups: {', '.join(sorted(ran))}"
            )
        for name, value in (("seconds", seconds), ("bytes", nbytes)):
            if not (math.isfinite(value) and value > 0):
                self._ignore(f"a timing with {name}={value!r} (must be a positive number)")
                return
        if calls < 1:
            self._ignore(f"a timing with calls={calls!r} (must be >= 1)")
            return
        key = (algorithm, group)
        self._timings.setdefault(key, deque(maxlen=self.history))
        self._timings[key].append(_Timing(algorithm, group, nbytes, seconds, calls))

    def add_bandwidth(self, link: str, bytes_per_s: float) -> None:
        """A measured bandwidth of ``link`` (``intra``, ``inter`` per NIC, or ``world``)."""
        if link not in LINKS:
            raise UsageError(f"unknown link {link!r}; known: {', '.join(LINKS)}")
        if not (math.isfinite(bytes_per_s) and bytes_per_s > 0):
            self._ignore(f"a {link} bandwidth of {bytes_per_s!r} (must be a positive number)")
            return
        self._bandwidths.setdefault(link, deque(maxlen=self.history)).append(bytes_per_s)

    @property
    def samples(self) -> int:
        """Equations the next fit uses."""
        return sum(len(d) for d in self._timings.values()) + sum(
            len(d) for d in self._bandwidths.values()
        )

    # -- fit --------------------------------------------------------------------------------

    def _collectives(self, algorithm: Algorithm, n: float) -> list[Collective]:
        job = self.job
        return collectives(algorithm, n, job.nodes, job.gpus_per_node, job.backend)

    def _prior_scale(self) -> list[float]:
        p = self.prior
        return [p.intra.latency_s, 1 / p.intra.bandwidth_Bps, p.inter.latency_s, 1 / p.node_Bps]

    def _rows(self, links: LinkModel) -> list[tuple[list[float], float, float]]:
        """``(coefficients on the relative unknowns, measured value, its input's mean)``."""
        scale = self._prior_scale()
        rows: list[tuple[list[float], float, float]] = []

        def slots(link: str, share: int) -> tuple[int, int, float]:
            """Latency slot, bandwidth slot and bandwidth divisor of a term on ``link``."""
            if link == "world":  # the slower class carries it
                a_i, b_i = link_figures("intra", 1, links)
                a_e, b_e = link_figures("inter", share, links)
                lat = _A_INTRA if a_i > a_e else _A_INTER
                return (lat, _B_INTRA, 1.0) if b_i < b_e else (lat, _B_INTER, 1.0 / share)
            if link == "intra":
                return _A_INTRA, _B_INTRA, 1.0
            return _A_INTER, _B_INTER, 1.0 / share

        for recent in self._timings.values():
            mean = sum(t.seconds for t in recent) / len(recent)
            for t in recent:
                group = [c for c in self._collectives(t.algorithm, 1.0) if c.group == t.group]
                per_byte = sum(c.recorded_bytes for c in group)  # recorded bytes per payload byte
                allreduces = t.calls / len(group)
                payload = t.nbytes / (allreduces * per_byte)
                coef = [0.0] * 4
                for c in group:
                    for term in c.terms:
                        lat, bw, divisor = slots(term.link, term.share)
                        coef[lat] += allreduces * term.messages * scale[lat]
                        coef[bw] += allreduces * term.wire_bytes * payload * scale[bw] / divisor
                rows.append((coef, t.seconds, mean))
        for link, figures in self._bandwidths.items():
            _, bw, divisor = slots(link, 1)
            mean = sum(1.0 / v for v in figures) / len(figures)
            for value in figures:
                coef = [0.0] * 4
                if bw == _B_INTER and link != "world":
                    divisor = 1.0 / self.prior.nics  # a per-NIC figure: the node has nics
                coef[bw] = scale[bw] / divisor
                rows.append((coef, 1.0 / value, mean))
        return rows

    def fit(self) -> LinkModel:
        """The profile with its latencies and bandwidths fitted to the measurements."""
        if not self.samples:
            return self.prior
        links, z = self.prior, [1.0] * 4
        for _ in range(_ITERATIONS):
            z = _solve(self._rows(links), self.prior_weight)
            links = self._links(z)
        return links

    def _links(self, z: list[float]) -> LinkModel:
        s, p = self._prior_scale(), self.prior
        measured = {slot for row, _, _ in self._rows(p) for slot, c in enumerate(row) if c}
        intra, inter = p.intra, p.inter
        if measured & {_A_INTRA, _B_INTRA}:
            intra = Link(intra.cls, z[_A_INTRA] * s[_A_INTRA], 1 / (z[_B_INTRA] * s[_B_INTRA]),
                         "measured")  # fmt: skip
        if measured & {_A_INTER, _B_INTER}:
            per_nic = 1 / (z[_B_INTER] * s[_B_INTER]) / p.nics
            inter = Link(inter.cls, z[_A_INTER] * s[_A_INTER], per_nic, "measured")
        return replace(p, intra=intra, inter=inter)

    def describe(self, links: LinkModel) -> str:
        """``intra 30us 412.0MiB/s, inter 100us 118.2MiB/s (98 samples)`` for logs."""
        parts = [
            f"{name} {link.latency_s * 1e6:.0f}us {format_bytes(link.bandwidth_Bps)}/s"
            + ("" if link.source == "measured" else " (profile)")
            for name, link in (("intra", links.intra), ("inter", links.inter))
        ]
        return f"{', '.join(parts)} ({self.samples} samples)"


def _solve(rows: list[tuple[list[float], float, float]], weight: float) -> list[float]:
    """Minimise mean(((row . z - y) / scale)^2) + weight * |z - 1|^2 with z >= floor.

    Each residual is relative to the mean of its input (one algorithm's group, or one link's
    figures), not to its own value: relative to itself, noisy timings would bias the fit low.
    """
    k = 4
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(k) if i not in fixed]
        ata = [[weight * (i == j) for j in free] for i in free]
        atb = [weight for _ in free]
        m = max(1, len(rows))
        for coef, y, mean in rows:
            rel = [c / mean for c in coef]
            rhs = y / mean - sum(rel[i] * v for i, v in fixed.items())
            for a, i in enumerate(free):
                atb[a] += rel[i] * rhs / m
                for b, j in enumerate(free):
                    ata[a][b] += rel[i] * rel[j] / m
        sol = _gauss(ata, atb)
        z = dict(fixed)
        z.update(zip(free, sol, strict=True))
        low = [i for i in free if z[i] < _FLOOR]
        if not low:
            return [z[i] for i in range(k)]
        for i in low:
            fixed[i] = _FLOOR


def _gauss(a: list[list[float]], b: list[float]) -> list[float]:
    """Solve ``a x = b`` (small, symmetric positive definite) by elimination with pivoting."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def measured_links(links: LinkModel, job: JobShape, bandwidths: Mapping[str, float]) -> LinkModel:
    """``links`` with measured bandwidths (bytes/s by link class: ``intra``, ``inter``,
    ``world``) fitted in through :class:`LinkCalibration`; latencies stay the profile's.
    What ``infermesh topo plan JOB`` and the coordinator plan a running job with."""
    calibration = LinkCalibration(links, job)
    for link, bytes_per_s in bandwidths.items():
        calibration.add_bandwidth(link, bytes_per_s)
    return calibration.fit() if calibration.samples else links
