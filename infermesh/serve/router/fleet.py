"""The router's knowledge of its backends, and the :class:`FleetView` strategies read.

Each backend has a :class:`BackendState`: health (from scraping), ejection (outlier
detection), published load (from its /metrics), served models, router-local counts and a
window of observed times to first byte (for hedge delays). :class:`Fleet` groups backends
into one pool per model and builds each pool's :class:`FleetView` (one cell, one row per
backend) again whenever a signal changes; the view's ``epoch`` moves with every rebuild.

Outlier ejection: ``eject_after`` consecutive failures (connect errors, 5xx before the first
byte) eject a backend for ``eject_base_s * 2**(k-1)`` seconds (its k-th ejection, capped at
``eject_max_s``); when that time is over it is routable again, and one success clears its
failure count.
"""

from __future__ import annotations

import collections
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from infermesh.serve.router.adapters import BackendAdapter, Load, adapter
from infermesh.serve.router.api import BackendSpec, RouterConfig
from infermesh.serve.strategies.api import CellSummary, FleetView

__all__ = ["BackendState", "Fleet", "Pool"]


class BackendState:
    """What the router knows about one backend."""

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        parts = urllib.parse.urlsplit(spec.url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        self.adapter: BackendAdapter = adapter(spec.kind, spec.model)
        self.healthy = True
        self.ejected_until = 0.0
        self.ejections = 0
        self.failures = 0
        self.load = Load()
        self.models: set[str] = {spec.model} if spec.model else set()
        self.inflight = 0
        self.inflight_at_scrape = 0
        self._ttfb: collections.deque[float] = collections.deque(maxlen=256)
        self._sorted: list[float] = []
        self._since_sort = 0
        self.per_token_s: float | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    def available(self, now: float) -> bool:
        """Healthy and not ejected at ``now``."""
        return self.healthy and now >= self.ejected_until

    def record_success(self, ttfb_s: float, total_s: float, output_tokens: int) -> None:
        """A request answered: fold its timings into the window and the speed estimate."""
        self.failures = 0
        self._ttfb.append(ttfb_s)
        self._since_sort += 1
        per = total_s / max(1, output_tokens)
        self.per_token_s = per if self.per_token_s is None else 0.9 * self.per_token_s + 0.1 * per

    def record_failure(self, now: float, cfg: RouterConfig) -> bool:
        """Count a failure; return True when it ejects the backend."""
        self.failures += 1
        if cfg.eject_after and self.failures >= cfg.eject_after and now >= self.ejected_until:
            self.ejections += 1
            span = min(cfg.eject_base_s * 2 ** (self.ejections - 1), cfg.eject_max_s)
            self.ejected_until = now + span
            self.failures = 0
            return True
        return False

    def ttfb_quantile(self, q: float, min_samples: int = 20) -> float | None:
        """The ``q`` quantile of recent times to first byte (None with too few samples)."""
        n = len(self._ttfb)
        if n < min_samples:
            return None
        if self._since_sort >= 16 or len(self._sorted) != n:
            self._sorted = sorted(self._ttfb)
            self._since_sort = 0
        return self._sorted[min(n - 1, int(q * n))]


@dataclass
class Pool:
    """Backends serving one model, with the view strategies read."""

    model: str | None
    rows: list[BackendState]
    view: FleetView
    built_at_epoch: int = -1
    hosts: dict[str, object] = field(default_factory=dict)


class Fleet:
    """All backends, grouped into per-model pools; rebuilds views when signals change."""

    def __init__(self, cfg: RouterConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.backends: list[BackendState] = []
        self.epoch = 0
        self._pools: dict[str | None, Pool] = {}
        self._next_readmit = float("inf")

    def set_specs(self, specs: Sequence[BackendSpec]) -> None:
        """Adopt a new backend list, keeping the state of backends that stay."""
        old = {b.url: b for b in self.backends}
        self.backends = [
            old[s.url] if s.url in old and old[s.url].spec == s else BackendState(s) for s in specs
        ]
        self.changed()

    def changed(self) -> None:
        """Signals changed: rebuild views on next use."""
        self.epoch += 1

    def note_send(self, b: BackendState) -> None:
        """A request left for ``b``: count it in every pool's view until the next scrape."""
        b.inflight += 1
        self._sync(b)

    def note_done(self, b: BackendState) -> None:
        """A request to ``b`` ended (answered, failed or cancelled)."""
        b.inflight -= 1
        self._sync(b)

    def _sync(self, b: BackendState) -> None:
        # router-local load the published signal does not include yet: how many more
        # requests this router has in flight there than when the signal was scraped
        local = float(max(0, b.inflight - b.inflight_at_scrape))
        for pool in self._pools.values():
            for row, other in enumerate(pool.rows):
                if other is b:
                    v = pool.view
                    v.cells.sent[0] += local - v.sent_since_update[row]
                    v.sent_since_update[row] = local

    def models(self) -> list[str]:
        """Every model some backend serves, sorted."""
        return sorted(set().union(*(b.models for b in self.backends)) if self.backends else set())

    def eject_check(self, now: float) -> None:
        """Rebuild views when an ejection has just run out (re-admission)."""
        if now >= self._next_readmit:
            self.changed()

    def pool(self, model: str | None) -> Pool | None:
        """The pool for ``model`` (None: every backend); None when no backend serves it."""
        now = self.clock()
        self.eject_check(now)
        pool = self._pools.get(model)
        if pool is not None and pool.built_at_epoch == self.epoch:
            return pool
        if model is None or not self.models():
            rows = list(self.backends)
        else:
            rows = [b for b in self.backends if model in b.models]
        if not rows:
            return None
        view = self._build_view(rows, now)
        if pool is None or [b.url for b in pool.rows] != [b.url for b in rows]:
            pool = Pool(model=model, rows=rows, view=view)
            self._pools[model] = pool
        else:
            pool.view = view
        pool.built_at_epoch = self.epoch
        return pool

    def _build_view(self, rows: list[BackendState], now: float) -> FleetView:
        n = len(rows)
        avail = np.array([b.available(now) for b in rows], dtype=bool)
        pending = [b.ejected_until for b in self.backends if b.ejected_until > now]
        self._next_readmit = min(pending) if pending else float("inf")
        cap = np.array([max(1.0, b.spec.capacity) for b in rows])
        running = np.array([b.load.running or 0.0 for b in rows])
        waiting = np.array([b.load.waiting or 0.0 for b in rows])
        kv = np.array([b.load.kv_usage or 0.0 for b in rows])
        per_tok = [b.per_token_s for b in rows]
        known = [p for p in per_tok if p]
        ref = float(np.median(known)) if known else 1.0
        speed = np.array([float(np.clip(ref / p, 0.05, 20.0)) if p else 1.0 for p in per_tok])
        queue = running + waiting
        local = np.array([float(max(0, b.inflight - b.inflight_at_scrape)) for b in rows])
        avail_cap = float(cap[avail].sum()) if avail.any() else 1.0
        cells = CellSummary(
            available=np.array([int(avail.sum())]),
            capacity=np.array([avail_cap]),
            load=np.array([float(queue[avail].sum()) / avail_cap if avail.any() else 0.0]),
            free_slots=np.array([avail_cap - float(queue[avail].sum())]),
            speed=np.array([float((cap * speed).sum() / cap.sum())]),
            price_per_hour=np.array([1.0]),
            sent=np.array([float(local[avail].sum())]),
        )
        return FleetView(
            cell_of=np.zeros(n, dtype=np.int64),
            cell_start=np.array([0, n]),
            available=avail,
            capacity=cap,
            speed=speed,
            price_per_hour=np.ones(n),
            queue_depth=queue,
            running=running,
            vram_free_frac=1.0 - np.clip(kv, 0.0, 1.0),
            utilization=np.minimum(running / cap, 1.0),
            sent_since_update=local,
            queue_age_s=0.0,
            vram_age_s=0.0,
            util_age_s=0.0,
            cells=cells,
            rtt_s=np.zeros((1, 1)),
            epoch=self.epoch,
        )

    @staticmethod
    def fill_order(view: FleetView, first: Sequence[int], limit: int) -> list[int]:
        """Rows to try: ``first`` (available, deduplicated), then the other available rows by
        load, up to ``limit``. When no row is available every row is tried (panic mode: a
        fleet that looks all-down is more often a blip than an outage)."""
        usable = view.available if view.available.any() else np.ones(view.n_nodes, dtype=bool)
        order: list[int] = []
        for i in first:
            if 0 <= i < view.n_nodes and usable[i] and i not in order:
                order.append(int(i))
        if len(order) < limit:
            load = view.queue_depth + view.sent_since_update
            for i in np.argsort(load, kind="stable").tolist():
                if len(order) >= limit:
                    break
                if usable[i] and i not in order:
                    order.append(int(i))
        return order[:limit]
