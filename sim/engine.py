"""The discrete-event engine: one strategy, one scenario, one deterministic run.

Node model (continuous batching as egalitarian processor sharing). A node runs up to
``max_batch`` requests at once, all progressing at the same per-request speed
``1 / (1 + k (b - 1))`` for a batch of ``b`` (``k`` = ``batch_slowdown``; 0 for the
``constant``/``exponential`` service models). Each node keeps a *virtual work clock*
``V`` that advances at that speed; a request that starts at ``V0`` with ``w`` seconds of
work finishes when ``V = V0 + w``. Only the node's next finish is an event; when its batch
changes the event is re-timed (a version number invalidates the old one). Events therefore
grow with requests (arrival at the router, arrival at the node, finish, plus re-timings),
never with decode steps. A request starts when a batch slot and its KV memory
(``(prompt + output) x kv_mb_per_token``) are free, else waits in the node's FIFO queue
(at most ``max_queue_per_node``; beyond that the node refuses and the router retries).

TTFT is approximated as queue wait plus the prefill part of the work at the batch speed
when the request starts, plus network time. A hedged request's copies race; the first to
finish at its node wins, the other is cancelled and the work it did is counted as waste.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from infermesh.serve.strategies.ab import arm_of, parse_ab
from infermesh.serve.strategies.api import Outcome, RequestView
from infermesh.serve.strategies.host import HostCounters, StrategyHost
from infermesh.serve.strategies.registry import default_registry
from sim.autoscaler import Autoscaler
from sim.config import SimConfig
from sim.hardware import FleetArrays, build_fleet
from sim.network import NetworkModel, build_network
from sim.signals import SignalPlane
from sim.workload import Workload, generate

__all__ = ["ProgressFn", "RunResult", "Status", "simulate"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, int, int], None]
"""Called now and then with (simulated time, events so far, requests routed)."""

# event types
_ARRIVE_NODE, _COMPLETE, _HEDGE, _RETRY = 0, 1, 2, 3
_SAMPLE_Q, _PUB_Q, _SAMPLE_V, _PUB_V, _SAMPLE_U, _PUB_U = 4, 5, 6, 7, 8, 9
_TICK, _AUTOSCALE, _READY, _SLOW, _RESTORE = 10, 11, 12, 13, 14

# job states
_NET, _QUEUED, _RUNNING, _DONE, _CANCELLED, _REFUSED = 0, 1, 2, 3, 4, 5


class Status:
    """Final status of a request (``r_status`` codes)."""

    IN_FLIGHT = 0
    COMPLETED = 1
    REJECTED = 2
    DROPPED = 3


@dataclass
class RunResult:
    """Everything a run produced; :mod:`sim.metrics` turns it into tables."""

    strategy: str
    t_end: float
    status: np.ndarray
    latency: np.ndarray
    wait: np.ndarray
    service: np.ndarray
    ttft: np.ndarray
    node: np.ndarray
    hedged: np.ndarray
    hedge_won: np.ndarray
    attempts: np.ndarray
    cache_hit: np.ndarray
    busy_s: np.ndarray
    provisioned_s: np.ndarray
    kv_gb_s: np.ndarray
    timeseries: dict[str, list[float]]
    counters: dict[str, float]
    host: HostCounters
    events: int
    workload: Workload
    fleet: FleetArrays
    #: A/B runs only: the arm (0 = a, 1 = b) of each request, arm labels, each arm's host
    arm: np.ndarray | None = None
    arm_names: tuple[str, ...] = ()
    arm_hosts: tuple[HostCounters, ...] = ()


def simulate(
    cfg: SimConfig,
    strategy: str,
    workload: Workload | None = None,
    progress: ProgressFn | None = None,
    progress_every: int = 50000,
) -> RunResult:
    """Run ``cfg`` with ``strategy`` and return the raw result (deterministic in the seed)."""
    wl = workload if workload is not None else generate(cfg)
    fleet = build_fleet(cfg.fleet)
    net = build_network(cfg.network, cfg.fleet.cells, cfg.seed)
    return _Engine(cfg, strategy, wl, fleet, net, progress, progress_every).run()


class _Engine:
    """State and event handlers of one run (private: use :func:`simulate`)."""

    def __init__(
        self,
        cfg: SimConfig,
        strategy: str,
        wl: Workload,
        fleet: FleetArrays,
        net: NetworkModel,
        progress: ProgressFn | None,
        progress_every: int,
    ) -> None:
        self.cfg = cfg
        self.name = strategy
        self.wl = wl
        self.fleet = fleet
        self.net = net
        self.progress = progress
        self.progress_every = progress_every
        n = fleet.n_nodes
        seed = int(np.random.default_rng([cfg.seed, 3]).integers(2**31))
        ab = parse_ab(strategy)
        names = [strategy] if ab is None else [ab.a, ab.b]
        #: one host per arm (one without an A/B split); arm[r] picks the host of request r
        self.hosts = [
            StrategyHost(
                default_registry.create(s, cfg.router.options.get(s), seed=seed + k),
                budget_s=cfg.router.latency_budget_ms / 1000.0,
                enforce_budget=cfg.router.enforce_budget,
            )
            for k, s in enumerate(names)
        ]
        self.host = self.hosts[0]
        self.arm_names: tuple[str, ...] = () if ab is None else ab.arm_names()
        self.arm: list[int] | None = None
        if ab is not None:
            key = wl.tenant if cfg.router.ab_key == "tenant" else np.arange(wl.n)
            self.arm = [arm_of(k, ab.split, cfg.seed) for k in key.tolist()]
        self.available = np.ones(n, dtype=bool)
        self.signals = SignalPlane(fleet, net, self.available)
        self.autoscaler = Autoscaler(cfg.autoscaler, fleet, self.available)
        self.batching = cfg.service.model == "batching"
        # per-node mutable state as lists (fast scalar access in the hot loop)
        self.nb = [0] * n
        self.qlen = [0] * n
        self.kv_used = [0.0] * n
        self.V = [0.0] * n
        self.Vt = [0.0] * n
        self.rate = [1.0] * n
        self.nxt = [math.inf] * n
        self.ver = [0] * n
        self.busy_since = [0.0] * n
        self.busy_acc = [0.0] * n
        self.kv_acc = [0.0] * n
        self.kv_since = [0.0] * n
        self.heaps: list[list[tuple[float, int]] | None] = [None] * n
        self.queues: list[deque[int] | None] = [None] * n
        self.caches: list[OrderedDict[int, None] | None] = [None] * n
        self.max_batch = fleet.max_batch.tolist()
        self.kv_cap = fleet.kv_capacity_gb.tolist()
        self.slow = (fleet.batch_slowdown if self.batching else np.zeros(n)).tolist()
        self.prefill_tps = fleet.prefill_tps.tolist()
        self.decode_tps = fleet.decode_tps.tolist()
        self.scale = fleet.compute_scale.tolist()
        self.cache_cap = fleet.cache_entries.tolist()
        self.cell_of = fleet.cell_of.tolist()
        self.rtt = net.rtt_s.tolist()
        self.bw = net.bandwidth_Bps.tolist()
        self.half_rtt = (0.5 * net.rtt_s).tolist()
        self.inv_bw = (1.0 / net.bandwidth_Bps).tolist()
        #: speed multiplier of each node (below 1 while a fault slows it down)
        self.mult = [1.0] * n
        # per-request columns
        r = wl.n
        self.arr_t = wl.t.tolist()
        self.kind = wl.kind.tolist()
        self.origin = wl.origin.tolist()
        self.tenant = wl.tenant.tolist()
        self.prompt = wl.prompt.tolist()
        self.output = wl.output.tolist()
        self.pgroup = wl.prefix_group.tolist()
        self.ptok = wl.prefix_tokens.tolist()
        self.work_s = wl.work_s.tolist()
        self.req_bytes = wl.req_bytes.tolist()
        self.resp_bytes = wl.resp_bytes.tolist()
        types = cfg.workload.request_types
        self.kind_names = list(wl.kinds)
        self.slo = [types[k].slo_s for k in wl.kinds]
        self.kv_mb = [types[k].kv_mb_per_token for k in wl.kinds]
        self.vram_gb = [types[k].vram_gb for k in wl.kinds]
        self.out_est = [
            round(types[k].output_tokens.median * math.exp(types[k].output_tokens.sigma ** 2 / 2))
            for k in wl.kinds
        ]
        self.r_status = [Status.IN_FLIGHT] * r
        self.r_winner = [-1] * r
        self.r_hedged = [False] * r
        self.r_hedge_won = [False] * r
        self.r_attempt = [0] * r
        self.r_partner = [-1] * r
        self.r_live = [0] * r
        self.r_excluded: dict[int, tuple[int, ...]] = {}
        self.retry_pending: set[int] = set()
        self.r_cache_hit = [False] * r
        #: when the client sees a first token: the earliest over the request's copies
        self.r_ttft = [math.inf] * r
        # per-job columns; job id == request id for the first copy, hedges appended
        self.j_req = list(range(r))
        self.j_node = [-1] * r
        self.j_state = [_NET] * r
        self.j_work = [0.0] * r
        self.j_kv = [0.0] * r
        self.j_vstart = [0.0] * r
        self.j_tnode = [0.0] * r
        self.j_tstart = [0.0] * r
        self.j_ttft = [0.0] * r
        self.j_tdone = [0.0] * r
        self.events: list[tuple[float, int, int, Any, Any]] = []
        self.seq = itertools.count()
        self.counters: dict[str, float] = {
            "hedges_sent": 0,
            "hedge_wins": 0,
            "wasted_work_s": 0.0,
            "retries": 0,
            "refusals": 0,
            "too_large": 0,
            "cancelled": 0,
            "hedges_in_service": 0,
            "hedges_over_budget": 0,
        }
        self.live_jobs = 0
        self.ts: dict[str, list[float]] = {
            k: []
            for k in (
                "t",
                "busy_frac",
                "slot_occupancy",
                "nodes_on",
                "kv_frac",
                "queued",
                "running",
                "arrival_rps",
            )
        }
        self._last_tick_arrivals = 0
        self._arrivals_done = 0
        self.routed = 0

    # ------------------------------------------------------------------ helpers
    def push(self, t: float, etype: int, a: Any = None, b: Any = None) -> None:
        heapq.heappush(self.events, (t, next(self.seq), etype, a, b))

    def _advance(self, n: int, t: float) -> float:
        v = self.V[n] + self.rate[n] * (t - self.Vt[n])
        self.V[n] = v
        self.Vt[n] = t
        return v

    def _set_batch(self, n: int, b: int, t: float) -> None:
        if b == 0 and self.nb[n] > 0:
            self.busy_acc[n] += t - self.busy_since[n]
            self.autoscaler.last_idle[n] = t
        elif b > 0 and self.nb[n] == 0:
            self.busy_since[n] = t
        self.nb[n] = b
        self.rate[n] = self.mult[n] / (1.0 + self.slow[n] * (b - 1)) if b > 0 else self.mult[n]

    def _set_kv(self, n: int, delta: float, t: float) -> None:
        self.kv_acc[n] += self.kv_used[n] * (t - self.kv_since[n])
        self.kv_since[n] = t
        self.kv_used[n] += delta

    def _reschedule(self, n: int, t: float) -> None:
        h = self.heaps[n]
        js = self.j_state
        while h and js[h[0][1]] != _RUNNING:
            heapq.heappop(h)
        if h:
            td = t + max(0.0, h[0][0] - self.V[n]) / self.rate[n]
            if td != self.nxt[n]:
                self.ver[n] += 1
                self.nxt[n] = td
                heapq.heappush(self.events, (td, next(self.seq), _COMPLETE, n, self.ver[n]))
        elif self.nxt[n] != math.inf:
            self.ver[n] += 1
            self.nxt[n] = math.inf

    def _start(self, n: int, j: int, t: float) -> None:
        # inlined _advance / _set_batch / _set_kv: this runs once per request
        rate = self.rate
        v = self.V[n] + rate[n] * (t - self.Vt[n])
        self.V[n] = v
        self.Vt[n] = t
        b = self.nb[n] + 1
        if b == 1:
            self.busy_since[n] = t
        self.nb[n] = b
        r = rate[n] = self.mult[n] / (1.0 + self.slow[n] * (b - 1))
        h = self.heaps[n]
        if h is None:
            h = self.heaps[n] = []
        heapq.heappush(h, (v + self.j_work[j], j))
        self.j_vstart[j] = v
        self.j_tstart[j] = t
        self.j_state[j] = _RUNNING
        kv = self.j_kv[j]
        if kv:
            self._set_kv(n, kv, t)
        ft = self.j_ttft[j] = t + self.j_ttft[j] / r
        req = self.j_req[j]
        ft += self.half_rtt[self.origin[req]][self.cell_of[n]]
        if ft < self.r_ttft[req]:
            self.r_ttft[req] = ft

    def _admit_queued(self, n: int, t: float) -> None:
        q = self.queues[n]
        if not q:
            return
        js = self.j_state
        cap = self.max_batch[n]
        while q:
            j = q[0]
            if js[j] != _QUEUED:
                q.popleft()
                continue
            if self.nb[n] < cap and self.kv_used[n] + self.j_kv[j] <= self.kv_cap[n]:
                q.popleft()
                self.qlen[n] -= 1
                self._start(n, j, t)
            else:
                break

    def _dispatch(self, j: int, n: int, t: float) -> None:
        r = self.j_req[j]
        c = self.cell_of[n]
        o = self.origin[r]
        fwd = self.half_rtt[o][c] + self.req_bytes[r] * self.inv_bw[o][c]
        self.j_node[j] = n
        self.j_state[j] = _NET
        self.r_live[r] += 1
        self.live_jobs += 1
        self.signals.note_sent(n, c)
        heapq.heappush(self.events, (t + fwd, next(self.seq), _ARRIVE_NODE, j, None))

    def _route(self, r: int, t: float) -> None:
        attempt = self.r_attempt[r]
        k = self.kind[r]
        rv = RequestView(
            request_id=r,
            kind=self.kind_names[k],
            tenant=self.tenant[r],
            prompt_tokens=self.prompt[r],
            output_tokens=self.out_est[k],
            prefix_group=self.pgroup[r],
            origin_cell=self.origin[r],
            slo_s=self.slo[k],
            attempt=attempt,
            excluded=self.r_excluded.get(r, ()),
        )
        if self.cfg.signals.perfect:
            self._refresh_perfect(t)
        self.signals.set_ages(t)
        host = self.host if self.arm is None else self.hosts[self.arm[r]]
        d = host.decide(rv, self.signals.view, t)
        self.routed += 1
        if not d.admit:
            if self.r_live[r] == 0:
                self.r_status[r] = Status.REJECTED if attempt == 0 else Status.DROPPED
            return
        target = d.targets[0]
        if rv.excluded:
            for cand in d.targets:
                if cand not in rv.excluded:
                    target = cand
                    break
        self._dispatch(r, target, t)
        h = d.hedge
        if h is not None and attempt == 0 and self.cfg.service.hedging and h.target != target:
            self.push(t + h.delay_s, _HEDGE, r, (h.target, h.only_if_queued))

    def _work_and_kv(self, j: int, n: int) -> tuple[float, float, float]:
        """(work seconds, KV GB, prefill seconds) of job ``j`` on node ``n``."""
        r = self.j_req[j]
        k = self.kind[r]
        if not self.batching:
            return self.work_s[r] / self.scale[n], 0.0, 0.0
        if self.kind_names[k] != "llm":
            return self.work_s[r] / self.scale[n], self.vram_gb[k], 0.0
        prompt = self.prompt[r]
        g = self.pgroup[r]
        if g >= 0 and self.cache_cap[n] > 0:
            cache = self.caches[n]
            if cache is None:
                cache = self.caches[n] = OrderedDict()
            if g in cache:
                cache.move_to_end(g)
                prompt -= self.ptok[r]
                if j == r:
                    self.r_cache_hit[r] = True
            else:
                cache[g] = None
                if len(cache) > self.cache_cap[n]:
                    cache.popitem(last=False)
        prefill = prompt / self.prefill_tps[n]
        work = prefill + self.output[r] / self.decode_tps[n]
        kv = (self.prompt[r] + self.output[r]) * self.kv_mb[k] / 1024.0
        return work, kv, prefill

    # ------------------------------------------------------------------ handlers
    def _refuse(self, j: int, t: float) -> None:
        r = self.j_req[j]
        self.counters["refusals"] += 1
        self.j_state[j] = _REFUSED
        self.r_live[r] -= 1
        self.live_jobs -= 1
        if j == r and self.r_attempt[r] < self.cfg.service.max_retries:
            self.r_excluded[r] = (*self.r_excluded.get(r, ()), self.j_node[j])
            self.r_attempt[r] += 1
            self.counters["retries"] += 1
            self.retry_pending.add(r)
            self.push(t + self.cfg.service.retry_backoff_s, _RETRY, r)
        elif (
            self.r_live[r] == 0
            and r not in self.retry_pending
            and self.r_status[r] == Status.IN_FLIGHT
        ):
            self.r_status[r] = Status.DROPPED

    def _settle_hedge(self, j: int, r: int, t: float) -> None:
        """Copy ``j`` of hedged request ``r`` won: count it and cancel the other copy."""
        if j != r:
            self.r_hedge_won[r] = True
            self.counters["hedge_wins"] += 1
            self._cancel(r, t)
        else:
            self._cancel(self.r_partner[r], t)

    def _feedback(self, host: StrategyHost, j: int, n: int, t: float) -> None:
        """Tell the strategy how the request of copy ``j`` went (it finished at ``t``)."""
        r = self.j_req[j]
        c = self.cell_of[n]
        o = self.origin[r]
        back = self.half_rtt[o][c] + self.resp_bytes[r] * self.inv_bw[o][c]
        lat = t + back - self.arr_t[r]
        k = self.kind[r]
        start = self.j_tstart[j]
        # positional: request_id, kind, target, latency_s, queue_s, service_s, met_slo, now
        host.observe(
            Outcome(
                r,
                self.kind_names[k],
                n,
                lat,
                start - self.j_tnode[j],
                t - start,
                lat <= self.slo[k],
                t,
            )
        )

    def _cancel(self, j: int, t: float) -> None:
        st = self.j_state[j]
        if st in (_DONE, _CANCELLED, _REFUSED):
            return
        n = self.j_node[j]
        r = self.j_req[j]
        self.j_state[j] = _CANCELLED
        self.counters["cancelled"] += 1
        self.r_live[r] -= 1
        self.live_jobs -= 1
        if st == _QUEUED:
            self.qlen[n] -= 1
        elif st == _RUNNING:
            v = self._advance(n, t)
            self.counters["wasted_work_s"] += v - self.j_vstart[j]
            self._set_batch(n, self.nb[n] - 1, t)
            self._set_kv(n, -self.j_kv[j], t)
            self._admit_queued(n, t)
            self._reschedule(n, t)

    def _on_hedge(self, r: int, hedge: tuple[int, bool], t: float) -> None:
        target, only_if_queued = hedge
        if self.r_status[r] != Status.IN_FLIGHT or self.r_live[r] == 0:
            return
        if only_if_queued and self.j_state[r] == _RUNNING:
            return
        if self.j_node[r] == target or not self.available[target]:
            return
        if self.counters["hedges_sent"] >= self.cfg.service.hedge_budget * self._arrivals_done:
            self.counters["hedges_over_budget"] += 1
            return
        k = len(self.j_req)
        self.j_req.append(r)
        self.j_node.append(target)
        self.j_state.append(_NET)
        for col in (
            self.j_work,
            self.j_kv,
            self.j_vstart,
            self.j_tnode,
            self.j_tstart,
            self.j_ttft,
            self.j_tdone,
        ):
            col.append(0.0)
        self.r_partner[r] = k
        self.r_hedged[r] = True
        self.counters["hedges_sent"] += 1
        if self.j_state[r] == _RUNNING:
            self.counters["hedges_in_service"] += 1
        self._dispatch(k, target, t)

    def _refresh_perfect(self, t: float) -> None:
        s = self.signals
        s.publish_queue(t, s.sample_queue(self.nb, self.qlen, s.sent_cum))
        s.publish_vram(t, s.sample_vram(self.kv_used))
        s.publish_util(t, (np.array(self.nb) > 0).astype(np.float64))

    def _busy_total(self, t: float) -> np.ndarray:
        busy = np.array(self.busy_acc)
        nb = np.array(self.nb)
        since = np.array(self.busy_since)
        return busy + np.where(nb > 0, t - since, 0.0)

    def _on_tick(self, t: float) -> None:
        nb = np.array(self.nb, dtype=np.float64)
        on = self.autoscaler.on
        ts = self.ts
        n_on = max(int(on.sum()), 1)
        ts["t"].append(t)
        ts["busy_frac"].append(float(((nb > 0) & on).sum()) / n_on)
        ts["slot_occupancy"].append(
            float(nb.sum()) / max(float(self.fleet.max_batch[on].sum()), 1.0)
        )
        ts["nodes_on"].append(float(on.sum()))
        ts["kv_frac"].append(
            float(np.sum(self.kv_used)) / max(float(self.fleet.kv_capacity_gb[on].sum()), 1e-9)
        )
        ts["queued"].append(float(np.sum(self.qlen)))
        ts["running"].append(float(nb.sum()))
        arrived = self._arrivals_done
        ts["arrival_rps"].append((arrived - self._last_tick_arrivals) / self.cfg.metrics_tick_s)
        self._last_tick_arrivals = arrived

    # ------------------------------------------------------------------ loop
    def run(self) -> RunResult:
        """Process arrivals and events in time order until the work is done.

        The common path (route an arrival, a copy reaching its node, a finish) is inlined
        here with every column bound to a local name: it runs a few times per request and
        attribute and call overhead dominate it. Rare events go to the handlers above.
        """
        cfg = self.cfg
        sig = cfg.signals
        arr_t = self.arr_t
        n_req = len(arr_t)
        hard_end = cfg.duration_s + cfg.drain_s
        ev = self.events
        pop = heapq.heappop
        push = heapq.heappush
        seq = self.seq
        self._arrivals_done = 0
        periodic = [(0.0, _TICK)]
        if not sig.perfect:
            periodic += [(0.0, _SAMPLE_Q), (0.0, _SAMPLE_V), (0.0, _SAMPLE_U)]
        if cfg.autoscaler.enabled:
            periodic.append((cfg.autoscaler.tick_s, _AUTOSCALE))
        for t0, e in periodic:
            self.push(t0, e)
        for t0, e, node in self._fault_events():
            self.push(t0, e, node)
        # request and job columns
        kind, kind_names, tenant, prompt, out_est = (
            self.kind,
            self.kind_names,
            self.tenant,
            self.prompt,
            self.out_est,
        )
        pgroup, origin, slo, excluded = self.pgroup, self.origin, self.slo, self.r_excluded
        r_attempt, r_status, r_live = self.r_attempt, self.r_status, self.r_live
        j_node, j_state, j_work, j_kv = (
            self.j_node,
            self.j_state,
            self.j_work,
            self.j_kv,
        )
        j_vstart, j_tstart, j_ttft, j_tnode = (
            self.j_vstart,
            self.j_tstart,
            self.j_ttft,
            self.j_tnode,
        )
        req_bytes = self.req_bytes
        # node columns
        nb, qlen, kv_used, kv_cap, max_batch = (
            self.nb,
            self.qlen,
            self.kv_used,
            self.kv_cap,
            self.max_batch,
        )
        V, Vt, rate, slow, mult, nxt, ver = (
            self.V,
            self.Vt,
            self.rate,
            self.slow,
            self.mult,
            self.nxt,
            self.ver,
        )
        busy_since, busy_acc, kv_acc, kv_since = (
            self.busy_since,
            self.busy_acc,
            self.kv_acc,
            self.kv_since,
        )
        heaps, queues, cell_of, available = self.heaps, self.queues, self.cell_of, self.available
        last_idle = self.autoscaler.last_idle
        half_rtt, inv_bw = self.half_rtt, self.inv_bw
        signals = self.signals
        view = signals.view
        sent_cum = signals.sent_cum
        cell_sent = view.cells.sent
        hosts = self.hosts
        arm = self.arm
        host0 = hosts[0]
        perfect = sig.perfect
        hedging = cfg.service.hedging
        max_queue = cfg.service.max_queue_per_node
        work_and_kv = self._work_and_kv
        r_ttft = self.r_ttft
        r_winner, r_partner, j_req, j_tdone = (
            self.r_winner,
            self.r_partner,
            self.j_req,
            self.j_tdone,
        )
        caches, cache_cap, ptok, r_cache_hit = (
            self.caches,
            self.cache_cap,
            self.ptok,
            self.r_cache_hit,
        )
        output, prefill_tps, decode_tps = self.output, self.prefill_tps, self.decode_tps
        kv_gb_per_token = [mb / 1024.0 for mb in self.kv_mb]
        # the kind index whose work the loop computes itself (-1: leave it to _work_and_kv)
        llm_batch = (
            self.kind_names.index("llm") if self.batching and "llm" in self.kind_names else -1
        )
        i = 0
        events = 0
        t = 0.0
        every = self.progress_every
        progress = self.progress
        inf = math.inf
        while True:
            if i < n_req and (not ev or arr_t[i] <= ev[0][0]):
                # ---- a request arrives at the router
                t = arr_t[i]
                r = i
                i += 1
                self._arrivals_done = i
                k = kind[r]
                attempt = r_attempt[r]
                rv = RequestView(
                    r,
                    kind_names[k],
                    tenant[r],
                    prompt[r],
                    out_est[k],
                    pgroup[r],
                    origin[r],
                    slo[k],
                    attempt,
                    excluded.get(r, ()) if attempt else (),
                )
                if perfect:
                    self._refresh_perfect(t)
                view.queue_age_s = t - signals.q_time
                view.vram_age_s = t - signals.v_time
                view.util_age_s = t - signals.u_time
                host = host0 if arm is None else hosts[arm[r]]
                d = host.decide(rv, view, t)
                self.routed += 1
                if not d.admit:
                    if r_live[r] == 0:
                        r_status[r] = Status.REJECTED if attempt == 0 else Status.DROPPED
                else:
                    target = d.targets[0]
                    # ---- dispatch (inlined _dispatch)
                    c = cell_of[target]
                    o = origin[r]
                    j_node[r] = target
                    j_state[r] = _NET
                    r_live[r] += 1
                    self.live_jobs += 1
                    sent_cum[target] += 1.0
                    view.sent_since_update[target] += 1.0
                    cell_sent[c] += 1.0
                    push(
                        ev,
                        (
                            t + half_rtt[o][c] + req_bytes[r] * inv_bw[o][c],
                            next(seq),
                            _ARRIVE_NODE,
                            r,
                            None,
                        ),
                    )
                    h = d.hedge
                    if h is not None and hedging and h.target != target:
                        self.push(t + h.delay_s, _HEDGE, r, (h.target, h.only_if_queued))
            elif not ev:
                break
            else:
                t, _, et, a, b = pop(ev)
                if t > hard_end:
                    break
                if et == _COMPLETE:
                    n = a
                    if b != ver[n]:
                        events += 1
                        continue
                    # ---- the node's next finish (stale versions were skipped above)
                    v = V[n] + rate[n] * (t - Vt[n])
                    V[n] = v
                    Vt[n] = t
                    hp = heaps[n]
                    while j_state[hp[0][1]] != _RUNNING:  # type: ignore[index]
                        pop(hp)  # type: ignore[arg-type]
                    _, j = pop(hp)  # type: ignore[arg-type]
                    nxt[n] = inf
                    bn = nb[n] - 1
                    nb[n] = bn
                    if bn == 0:
                        busy_acc[n] += t - busy_since[n]
                        last_idle[n] = t
                        rate[n] = mult[n]
                    else:
                        rate[n] = mult[n] / (1.0 + slow[n] * (bn - 1))
                    kv = j_kv[j]
                    if kv:
                        kv_acc[n] += kv_used[n] * (t - kv_since[n])
                        kv_since[n] = t
                        kv_used[n] -= kv
                    j_state[j] = _DONE
                    self.live_jobs -= 1
                    # ---- the request completes (a hedge race is settled by _settle_hedge)
                    r = j_req[j]
                    r_live[r] -= 1
                    if r_status[r] == Status.IN_FLIGHT:
                        r_status[r] = Status.COMPLETED
                        r_winner[r] = j
                        j_tdone[j] = t
                        if j != r or r_partner[r] >= 0:
                            self._settle_hedge(j, r, t)
                        host = host0 if arm is None else hosts[arm[r]]
                        if host.wants_feedback:
                            self._feedback(host, j, n, t)
                    if queues[n]:
                        self._admit_queued(n, t)
                    # ---- re-time the node's next finish (inlined _reschedule)
                    while hp and j_state[hp[0][1]] != _RUNNING:
                        pop(hp)
                    if hp:
                        td = t + max(0.0, hp[0][0] - V[n]) / rate[n]
                        ver[n] += 1
                        nxt[n] = td
                        push(ev, (td, next(seq), _COMPLETE, n, ver[n]))
                elif et == _ARRIVE_NODE:
                    j = a
                    if j_state[j] == _CANCELLED:
                        events += 1
                        continue
                    # ---- a copy reaches its node (inlined _start if a slot and KV memory are free)
                    n = j_node[j]
                    j_tnode[j] = t
                    if not available[n]:
                        self._refuse(j, t)
                        events += 1
                        continue
                    r = j_req[j]
                    k = kind[r]
                    if k == llm_batch:
                        # ---- LLM work under batching (inlined _work_and_kv)
                        pr = prompt[r]
                        g = pgroup[r]
                        if g >= 0 and cache_cap[n] > 0:
                            cache = caches[n]
                            if cache is None:
                                cache = caches[n] = OrderedDict()
                            if g in cache:
                                cache.move_to_end(g)
                                pr -= ptok[r]
                                if j == r:
                                    r_cache_hit[r] = True
                            else:
                                cache[g] = None
                                if len(cache) > cache_cap[n]:
                                    cache.popitem(last=False)
                        prefill = pr / prefill_tps[n]
                        work = prefill + output[r] / decode_tps[n]
                        kv = (prompt[r] + output[r]) * kv_gb_per_token[k]
                    else:
                        work, kv, prefill = work_and_kv(j, n)
                    if kv > kv_cap[n]:
                        self.counters["too_large"] += 1
                        self._refuse(j, t)
                    elif qlen[n] == 0 and nb[n] < max_batch[n] and kv_used[n] + kv <= kv_cap[n]:
                        j_work[j] = work
                        j_kv[j] = kv
                        v = V[n] + rate[n] * (t - Vt[n])
                        V[n] = v
                        Vt[n] = t
                        bn = nb[n] + 1
                        if bn == 1:
                            busy_since[n] = t
                        nb[n] = bn
                        rt = rate[n] = mult[n] / (1.0 + slow[n] * (bn - 1))
                        hp = heaps[n]
                        if hp is None:
                            hp = heaps[n] = []
                        push(hp, (v + work, j))
                        j_vstart[j] = v
                        j_tstart[j] = t
                        j_state[j] = _RUNNING
                        if kv:
                            kv_acc[n] += kv_used[n] * (t - kv_since[n])
                            kv_since[n] = t
                            kv_used[n] += kv
                        ft = j_ttft[j] = t + prefill / rt
                        ft += half_rtt[origin[r]][cell_of[n]]
                        if ft < r_ttft[r]:
                            r_ttft[r] = ft
                        # ---- re-time the node's next finish (inlined _reschedule)
                        while j_state[hp[0][1]] != _RUNNING:
                            pop(hp)
                        td = t + max(0.0, hp[0][0] - v) / rt
                        if td != nxt[n]:
                            ver[n] += 1
                            nxt[n] = td
                            push(ev, (td, next(seq), _COMPLETE, n, ver[n]))
                    elif qlen[n] < max_queue:
                        j_work[j] = work
                        j_kv[j] = kv
                        j_ttft[j] = prefill
                        q = queues[n]
                        if q is None:
                            q = queues[n] = deque()
                        q.append(j)
                        qlen[n] += 1
                        j_state[j] = _QUEUED
                    else:
                        self._refuse(j, t)
                elif et >= _SAMPLE_Q:
                    if i >= n_req and self.live_jobs == 0 and et < _READY:
                        continue  # nothing left to observe: let periodic events lapse
                    self._on_periodic(et, a, t)
                elif et == _HEDGE:
                    self._on_hedge(a, b, t)
                else:  # _RETRY
                    self.retry_pending.discard(a)
                    if r_status[a] == Status.IN_FLIGHT and j_state[a] == _REFUSED:
                        self._route(a, t)
            events += 1
            if progress is not None and events % every == 0:
                progress(t, events, self.routed)
        t_end = max(t, cfg.duration_s)
        t_end = min(t_end, hard_end)
        if progress is not None:
            progress(t_end, events, self.routed)
        return self._result(t_end, events)

    def _on_periodic(self, et: int, a: Any, t: float) -> None:
        s = self.signals
        sig = self.cfg.signals
        if et == _PUB_Q:
            s.publish_queue(a[0], a[1])
        elif et == _SAMPLE_Q:
            self.push(
                t + sig.queue_depth.delay_s,
                _PUB_Q,
                (t, s.sample_queue(self.nb, self.qlen, s.sent_cum)),
            )
            self.push(t + sig.queue_depth.period_s, _SAMPLE_Q)
        elif et == _PUB_V:
            s.publish_vram(a[0], a[1])
        elif et == _SAMPLE_V:
            self.push(t + sig.vram.delay_s, _PUB_V, (t, s.sample_vram(self.kv_used)))
            self.push(t + sig.vram.period_s, _SAMPLE_V)
        elif et == _PUB_U:
            s.publish_util(a[0], a[1])
        elif et == _SAMPLE_U:
            self.push(
                t + sig.utilization.delay_s, _PUB_U, (t, s.sample_util(t, self._busy_total(t)))
            )
            self.push(t + sig.utilization.period_s, _SAMPLE_U)
        elif et == _TICK:
            self._on_tick(t)
            self.push(t + self.cfg.metrics_tick_s, _TICK)
        elif et == _AUTOSCALE:
            ready_at = self.autoscaler.tick(t, self.nb, self.qlen)
            if ready_at is not None:
                self.push(ready_at[0], _READY, ready_at[1])
            s.refresh_cells()
            self.push(t + self.cfg.autoscaler.tick_s, _AUTOSCALE)
        elif et == _READY:
            self.autoscaler.ready(a, t)
            s.refresh_cells()
        elif et in (_SLOW, _RESTORE):
            self._set_speed(a, self.cfg.faults.slow_speed if et == _SLOW else 1.0, t)

    def _fault_events(self) -> list[tuple[float, int, int]]:
        """(time, event, node) of the configured slow-downs and their ends."""
        f = self.cfg.faults
        n = self.fleet.n_nodes
        count = round(f.slow_fraction * n)
        if count == 0:
            return []
        rng = np.random.default_rng([self.cfg.seed, 5])
        nodes = np.sort(rng.choice(n, size=count, replace=False)).tolist()
        out = [(f.start_s, _SLOW, node) for node in nodes]
        if f.duration_s > 0:
            out += [(f.start_s + f.duration_s, _RESTORE, node) for node in nodes]
        return out

    def _set_speed(self, n: int, mult: float, t: float) -> None:
        """Change node ``n``'s speed multiplier at ``t`` and re-time its next finish."""
        self._advance(n, t)
        self.mult[n] = mult
        b = self.nb[n]
        self.rate[n] = mult / (1.0 + self.slow[n] * (b - 1)) if b > 0 else mult
        self._reschedule(n, t)

    def _request_times(self) -> tuple[np.ndarray, ...]:
        """Latency, queue wait, service, TTFT and node per request (NaN / -1 if not done)."""
        win = np.array(self.r_winner, dtype=np.int64)
        done = win >= 0
        w = win[done]
        node_of_job = np.array(self.j_node, dtype=np.int64)
        node = np.full(win.shape, -1, dtype=np.int64)
        node[done] = node_of_job[w]
        wl = self.wl
        cell = self.fleet.cell_of[node[done]]
        origin = wl.origin[done]
        half_rtt = 0.5 * self.net.rtt_s[origin, cell]
        back = half_rtt + wl.resp_bytes[done] / self.net.bandwidth_Bps[origin, cell]
        tdone = np.array(self.j_tdone)[w]
        tstart = np.array(self.j_tstart)[w]
        cols = [np.full(win.shape, np.nan) for _ in range(4)]
        lat, wait, svc, ttft = cols
        lat[done] = tdone + back - wl.t[done]
        wait[done] = tstart - np.array(self.j_tnode)[w]
        svc[done] = tdone - tstart
        # first token of whichever copy produced one first (a hedge's or the original's)
        ttft[done] = np.array(self.r_ttft)[done] - wl.t[done]
        return lat, wait, svc, ttft, node

    def _result(self, t_end: float, events: int) -> RunResult:
        busy = self._busy_total(t_end)
        kv = np.array(self.kv_acc) + np.array(self.kv_used) * (t_end - np.array(self.kv_since))
        prov = self.autoscaler.provisioned(t_end)
        lat, wait, svc, ttft, node = self._request_times()
        return RunResult(
            strategy=self.name,
            t_end=t_end,
            status=np.array(self.r_status, dtype=np.int8),
            latency=lat,
            wait=wait,
            service=svc,
            ttft=ttft,
            node=node,
            hedged=np.array(self.r_hedged, dtype=bool),
            hedge_won=np.array(self.r_hedge_won, dtype=bool),
            attempts=np.array(self.r_attempt, dtype=np.int64),
            cache_hit=np.array(self.r_cache_hit, dtype=bool),
            busy_s=busy,
            provisioned_s=prov,
            kv_gb_s=kv,
            timeseries=self.ts,
            counters=dict(self.counters),
            host=self._host_totals(),
            events=events,
            workload=self.wl,
            fleet=self.fleet,
            arm=None if self.arm is None else np.array(self.arm, dtype=np.int8),
            arm_names=self.arm_names,
            arm_hosts=tuple(h.counters for h in self.hosts) if self.arm is not None else (),
        )

    def _host_totals(self) -> HostCounters:
        """The host counters of the run (summed over the arms of an A/B run)."""
        if len(self.hosts) == 1:
            return self.host.counters
        total = HostCounters()
        for h in self.hosts:
            for f in dataclasses.fields(HostCounters):
                setattr(total, f.name, getattr(total, f.name) + getattr(h.counters, f.name))
        return total
