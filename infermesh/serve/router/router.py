"""The inference router: an aiohttp ingress in front of OpenAI-compatible backends.

Per request (``POST /v1/completions`` or ``/v1/chat/completions``):

1. read the body (413 over ``max_body_bytes``), parse JSON (400), find the model's pool
   (404 for a model no backend serves);
2. admission: the tenant's token bucket (tenant = API key from ``Authorization: Bearer``
   or ``X-API-Key``), the global in-flight limit and the saturation limit (429 with
   ``Retry-After``);
3. pick the A/B arm by a stable hash (API key, else the prompt), build a
   :class:`RequestView` and ask that arm's strategy through the :class:`StrategyHost`
   (latency budget; round robin on overrun or error, counted);
4. dispatch: the first target; a hedge copy to the next one after the primary's observed
   time-to-first-byte quantile (within the hedge budget); on a connect error, a 429 or a
   5xx before the first byte, the next target (up to ``max_retries``). The first attempt
   that yields a first byte wins; the others are cancelled (their connections closed);
5. relay the winner's answer (SSE chunk by chunk) and feed the outcome back.

A background task scrapes each backend's /metrics (load) every ``scrape_interval_s`` and
its model list every ``models_interval_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infermesh.obs import metrics
from infermesh.obs.metrics import REGISTRY
from infermesh.obs.tracing import exporting, get_tracer
from infermesh.security.http import https_context
from infermesh.serve.openai import (
    ApiError,
    CompletionParams,
    parse_completion_body,
    parse_json_body,
)
from infermesh.serve.router.admission import HedgeBudget, TenantBuckets
from infermesh.serve.router.api import BackendSource, RouterConfig
from infermesh.serve.router.fleet import BackendState, Fleet, Pool
from infermesh.serve.router.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from infermesh.serve.strategies.api import Hedge, Outcome, RequestView
from infermesh.serve.strategies.host import StrategyHost
from infermesh.serve.strategies.registry import create as create_strategy

__all__ = ["Router"]

log = logging.getLogger(__name__)
_tracer = get_tracer(__name__)

_LAT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUESTS = metrics.counter("infermesh_router_requests", "Requests routed, per arm", ("strategy",))
FAILED = metrics.counter(
    "infermesh_router_failed", "Requests answered with a backend error, per arm", ("strategy",)
)
LATENCY = metrics.histogram(
    "infermesh_router_request_latency_seconds", "Router ingress to last byte", ("strategy",), _LAT
)
TTFB = metrics.histogram(
    "infermesh_router_time_to_first_byte_seconds", "Ingress to first byte", ("strategy",), _LAT
)
FALLBACKS = metrics.counter(
    "infermesh_router_strategy_fallbacks",
    "Decisions replaced by round robin (budget overrun or error)",
    ("strategy",),
)
DECISION = metrics.histogram(
    "infermesh_router_decision_seconds",
    "Strategy decision time",
    ("strategy",),
    (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2),
)
HEDGES = metrics.counter("infermesh_router_hedges", "Hedge copies sent", ("strategy",))
HEDGE_WINS = metrics.counter(
    "infermesh_router_hedge_wins", "Requests answered by the hedge copy", ("strategy",)
)
RETRIES = metrics.counter("infermesh_router_retries", "Attempts after a failure", ("strategy",))
REJECTED = metrics.counter(
    "infermesh_router_rejected", "Requests refused by admission control (429)", ("tenant",)
)
EJECTIONS = metrics.counter("infermesh_router_ejections", "Backend ejections", ("node",))
BACKEND_UP = metrics.gauge("infermesh_router_backend_up", "1 when routable", ("node",))
INFLIGHT = metrics.gauge(
    "infermesh_router_backend_inflight", "Requests in flight per backend", ("node",)
)

_HOP = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "accept-encoding",  # answers are relayed as they are: ask for them uncompressed
}
_MAX_TENANT_LABELS = 100


class _ArmMetrics:
    """The labelled children of the per-arm metrics (looked up once, not per request)."""

    def __init__(self, arm: str) -> None:
        self.requests = REQUESTS.labels(strategy=arm)
        self.failed = FAILED.labels(strategy=arm)
        self.latency = LATENCY.labels(strategy=arm)
        self.ttfb = TTFB.labels(strategy=arm)
        self.fallbacks = FALLBACKS.labels(strategy=arm)
        self.decision = DECISION.labels(strategy=arm)
        self.hedges = HEDGES.labels(strategy=arm)
        self.hedge_wins = HEDGE_WINS.labels(strategy=arm)
        self.retries = RETRIES.labels(strategy=arm)


class _Retryable(Exception):
    """A backend answered 429 or 5xx before the first byte (or could not be reached)."""

    def __init__(self, backend: BackendState, status: int, body: bytes, reason: str) -> None:
        super().__init__(reason)
        self.backend = backend
        self.status = status
        self.body = body


@dataclass
class _Upstream:
    backend: BackendState
    resp: UpstreamResponse
    first: bytes
    started: float
    first_at: float
    hedge: bool


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _routing_params(body: dict[str, Any], chat: bool) -> CompletionParams:
    """What routing needs from a body, read leniently (the backend validates the rest)."""
    try:
        return parse_completion_body(body, chat, max_tokens_limit=1 << 30)
    except ApiError as e:
        if e.param == "model":
            raise
    model = body.get("model")
    if chat:
        msgs = body.get("messages")
        prompt = (
            "".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
            if isinstance(msgs, list)
            else ""
        )
    else:
        raw = body.get("prompt", "")
        prompt = raw if isinstance(raw, str) else json.dumps(raw)
    mt = body.get("max_tokens")
    return CompletionParams(
        model=model if isinstance(model, str) else None,
        prompt=prompt,
        max_tokens=mt if isinstance(mt, int) and not isinstance(mt, bool) and mt > 0 else 16,
        temperature=1.0,
        top_p=1.0,
        stop=(),
        seed=None,
        stream=body.get("stream") is True,
        chat=chat,
    )


class Router:
    """The ingress; :meth:`start` binds and starts scraping, :meth:`close` stops both."""

    def __init__(self, config: RouterConfig, source: BackendSource) -> None:
        self.config = config
        self.source = source
        self.fleet = Fleet(config)
        self.arms = [config.strategy] + ([config.ab_strategy] if config.ab_strategy else [])
        for name in self.arms:  # unknown names and options fail here, before binding
            create_strategy(name, config.strategy_options if name == config.strategy else None)
        self.buckets = TenantBuckets(config.tenant_rate, config.tenant_burst)
        self.hedge_budget = HedgeBudget(config.hedge_fraction)
        self.inflight = 0
        self.port = 0
        self._ids = 0
        self._tenant_labels: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._upstream = UpstreamPool()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._arm_metrics = {arm: _ArmMetrics(arm) for arm in self.arms}

    # ------------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> int:
        """Scrape backends once, then listen; return the bound port."""
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
            auto_decompress=False,
        )
        self.fleet.set_specs(await self.source.backends())
        await self._scrape_models()
        await self._scrape_load()
        self._tasks = [
            asyncio.ensure_future(self._scrape_loop()),
            asyncio.ensure_future(self._models_loop()),
            asyncio.ensure_future(self._watch_source()),
        ]
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.config.host,
            self.config.port,
            backlog=4096,
            ssl_context=https_context(self.config.tls_dir),
        )
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.config.port
        log.info("router on http://%s:%d (%s)", self.config.host, self.port, ", ".join(self.arms))
        return self.port

    async def close(self) -> None:
        """Stop listening and scraping; close backend connections."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        self._upstream.close()

    # ------------------------------------------------------------------ scraping

    async def _watch_source(self) -> None:
        async for _ in self.source.changes():
            self.fleet.set_specs(await self.source.backends())
            await self._scrape_models()

    async def _scrape_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.scrape_interval_s)
            await self._scrape_load()

    async def _models_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.models_interval_s)
            await self._scrape_models()

    async def _get(self, url: str, timeout: float) -> bytes:
        assert self._session is not None
        async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if r.status != 200:
                raise aiohttp.ClientResponseError(r.request_info, (), status=r.status)
            return await r.read()

    async def _scrape_one(self, b: BackendState) -> None:
        a = b.adapter
        timeout = max(1.0, 5 * self.config.scrape_interval_s)
        try:
            if a.running_metrics and a.name != "triton":
                inflight = b.inflight
                b.load = a.load((await self._get(b.url + "/metrics", timeout)).decode())
                # what the backend published includes (about) what was in flight before
                b.inflight_at_scrape = min(inflight, b.inflight)
            else:
                await self._get(b.url + a.health_path, timeout)
            up = True
        except (aiohttp.ClientError, asyncio.TimeoutError, UnicodeDecodeError):
            up = False
        if up != b.healthy:
            log.warning("backend %s is %s", b.url, "up" if up else "down")
        b.healthy = up

    async def _scrape_load(self) -> None:
        backends = list(self.fleet.backends)
        await asyncio.gather(*(self._scrape_one(b) for b in backends))
        now = time.monotonic()
        for b in backends:
            BACKEND_UP.labels(node=b.url).set(1 if b.available(now) else 0)
        self.fleet.changed()

    async def _scrape_models(self) -> None:
        async def one(b: BackendState) -> None:
            path = b.adapter.models_path
            if path is None:
                return
            try:
                data = json.loads(await self._get(b.url + path, 2.0))
                b.models = {str(m["id"]) for m in data.get("data", []) if "id" in m}
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
                pass

        await asyncio.gather(*(one(b) for b in list(self.fleet.backends)))
        self.fleet.changed()

    # ------------------------------------------------------------------ small routes

    async def _health(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        up = [b.url for b in self.fleet.backends if b.available(now)]
        status = 200 if up else 503
        return _json({"status": "ok" if up else "no backend available", "backends": up}, status)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {
                "id": m,
                "object": "model",
                "owned_by": "infermesh",
                "backends": sum(1 for b in self.fleet.backends if m in b.models),
            }
            for m in self.fleet.models()
        ]
        return _json({"object": "list", "data": data})

    # ------------------------------------------------------------------ proxy

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "/v1/completions", chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "/v1/chat/completions", chat=True)

    async def _handle(self, request: web.Request, path: str, chat: bool) -> web.StreamResponse:
        if not exporting():  # a span costs tens of microseconds: only when someone reads it
            return await self._answer(request, path, chat)
        with _tracer.start_as_current_span("router.request") as span:
            span.set_attribute("path", path)
            response = await self._answer(request, path, chat)
            span.set_attribute("status", response.status)
            return response

    async def _answer(self, request: web.Request, path: str, chat: bool) -> web.StreamResponse:
        try:
            return await self._route(request, path, chat)
        except ApiError as e:
            return _json(e.body(), e.status, e.headers)
        except web.HTTPRequestEntityTooLarge:
            msg = (
                f"request body is larger than the router's limit ({self.config.max_body_bytes} "
                "bytes, --max-body-bytes); send a smaller body"
            )
            return _json(ApiError(413, msg, code="body_too_large").body(), 413)

    def _tenant(self, request: web.Request) -> str:
        """The caller's tenant: a digest of its API key (the key never reaches labels/logs)."""
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth.startswith("Bearer ") else request.headers.get("X-API-Key")
        if not key:
            return "anonymous"
        return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]

    def _tenant_label(self, key: str) -> str:
        if key in self._tenant_labels:
            return key
        if len(self._tenant_labels) < _MAX_TENANT_LABELS:
            self._tenant_labels.add(key)
            return key
        return "other"

    def _admit(self, tenant: str, pool: Pool) -> None:
        cfg = self.config
        wait = self.buckets.take(tenant)
        if wait > 0:
            REJECTED.labels(tenant=self._tenant_label(tenant)).inc()
            raise ApiError(
                429,
                f"rate limit for this API key reached ({cfg.tenant_rate:g} requests/s, burst "
                f"{cfg.tenant_burst:g}); retry after the Retry-After header",
                "rate_limit_exceeded",
                code="tenant_rate_limit",
                headers={"Retry-After": self.buckets.retry_after(wait)},
            )
        if self.inflight >= cfg.max_inflight:
            REJECTED.labels(tenant=self._tenant_label(tenant)).inc()
            raise ApiError(
                429,
                f"router is saturated ({self.inflight} requests in flight, --max-inflight "
                f"{cfg.max_inflight}); retry later",
                "rate_limit_exceeded",
                code="router_saturated",
                headers={"Retry-After": "1"},
            )
        if cfg.saturation_load > 0:
            v = pool.view
            load = (v.queue_depth + v.sent_since_update) / v.capacity
            if v.available.any() and float(load[v.available].min()) >= cfg.saturation_load:
                REJECTED.labels(tenant=self._tenant_label(tenant)).inc()
                raise ApiError(
                    429,
                    f"every backend is above the saturation load {cfg.saturation_load:g} "
                    "(queued + running per unit of capacity); retry later",
                    "rate_limit_exceeded",
                    code="fleet_saturated",
                    headers={"Retry-After": "1"},
                )

    def _host(self, pool: Pool, arm: str) -> StrategyHost:
        host = pool.hosts.get(arm)
        if not isinstance(host, StrategyHost):
            opts = self.config.strategy_options if arm == self.config.strategy else None
            host = StrategyHost(
                create_strategy(arm, opts),
                budget_s=self.config.decision_budget_s,
                enforce_budget=True,
            )
            pool.hosts[arm] = host
        return host

    async def _route(self, request: web.Request, path: str, chat: bool) -> web.StreamResponse:
        t0 = time.perf_counter()
        raw = await request.read()
        params = _routing_params(parse_json_body(raw), chat)
        pool = self.fleet.pool(params.model)
        if pool is None:
            raise ApiError(
                404,
                f"model {params.model!r} is not served by any backend; served: "
                f"{', '.join(self.fleet.models()) or '(none yet)'} (see /v1/models)",
                param="model",
                code="model_not_found",
            )
        tenant = self._tenant(request)
        self._admit(tenant, pool)
        cfg = self.config
        arm = self.arms[0]
        key = tenant if tenant != "anonymous" else params.prompt[: cfg.prefix_chars]
        if len(self.arms) > 1 and zlib.crc32(key.encode()) % 10_000 < cfg.ab_fraction * 10_000:
            arm = self.arms[1]
        host = self._host(pool, arm)
        am = self._arm_metrics[arm]
        view = pool.view
        self._ids += 1
        prefix = params.prompt[: cfg.prefix_chars]
        rv = RequestView(
            request_id=self._ids,
            kind="llm",
            tenant=zlib.crc32(tenant.encode()) & 0x7FFFFFFF,
            prompt_tokens=max(1, len(params.prompt) // 4),
            output_tokens=params.max_tokens,
            prefix_group=zlib.crc32(prefix.encode()) & 0x7FFFFFFF if prefix else -1,
            origin_cell=0,
            slo_s=cfg.slo_s,
        )
        fallbacks = host.counters.fallbacks
        d0 = time.perf_counter()
        decision = host.decide(rv, view, time.monotonic())
        am.decision.observe(time.perf_counter() - d0)
        if host.counters.fallbacks != fallbacks:
            am.fallbacks.inc()
        if not decision.admit:
            REJECTED.labels(tenant=self._tenant_label(tenant)).inc()
            raise ApiError(
                429,
                f"strategy {arm!r} refused the request (expected wait above its objective); "
                "retry later",
                "rate_limit_exceeded",
                code="strategy_rejected",
                headers={"Retry-After": TenantBuckets.retry_after(decision.retry_after_s)},
            )
        am.requests.inc()
        self.hedge_budget.earn()
        order = Fleet.fill_order(view, decision.targets, 2)  # first choice and hedge target
        headers = b"".join(
            f"{k}: {v}\r\n".encode("latin-1")
            for k, v in request.headers.items()
            if k.lower() not in _HOP
        )
        self.inflight += 1
        up: _Upstream | None = None
        try:
            up = await self._dispatch(pool, order, decision.hedge, params, path, raw, headers, am)
            am.ttfb.observe(up.first_at - t0)
            resp = await self._relay(request, up, params)
            total = time.perf_counter() - t0
            am.latency.observe(total)
            up.backend.record_success(
                up.first_at - up.started, time.perf_counter() - up.started, params.max_tokens
            )
            if host.wants_feedback:
                row = pool.rows.index(up.backend)
                host.observe(
                    Outcome(
                        rv.request_id,
                        "llm",
                        row,
                        total,
                        0.0,
                        total,
                        total <= cfg.slo_s,
                        time.monotonic(),
                    )
                )
            return resp
        finally:
            self.inflight -= 1
            if up is not None:
                up.resp.close()
                self._done(up.backend)

    def _launch(self, pool: Pool, row: int) -> BackendState:
        b = pool.rows[row]
        self.fleet.note_send(b)
        INFLIGHT.labels(node=b.url).set(b.inflight)
        return b

    def _done(self, b: BackendState) -> None:
        self.fleet.note_done(b)
        INFLIGHT.labels(node=b.url).set(b.inflight)

    async def _attempt(
        self,
        b: BackendState,
        path: str,
        raw: bytes,
        params: CompletionParams,
        headers: bytes,
        hedge: bool,
    ) -> _Upstream:
        started = time.perf_counter()
        send_path, body = b.adapter.request(path, raw, params)
        try:
            resp = await self._upstream.post(
                b.host, b.port, b.base_path + send_path, headers, body, b.tls
            )
        except UpstreamError as e:
            raise _Retryable(b, 502, b"", str(e)) from None
        try:
            if resp.status >= 500 or resp.status == 429:
                try:
                    body = await resp.read()
                except UpstreamError:
                    body = b""
                raise _Retryable(b, resp.status, body, f"HTTP {resp.status}")
            try:
                first = await resp.read_chunk()
            except UpstreamError as e:
                raise _Retryable(b, 502, b"", str(e)) from None
            if not first and resp.status == 200:
                raise _Retryable(b, 502, b"", "empty answer")
            return _Upstream(b, resp, first, started, time.perf_counter(), hedge)
        except BaseException:
            resp.close()
            raise

    async def _dispatch(
        self,
        pool: Pool,
        order: list[int],
        hedge: Hedge | None,
        params: CompletionParams,
        path: str,
        raw: bytes,
        headers: bytes,
        am: _ArmMetrics,
    ) -> _Upstream:
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.request_timeout_s
        tasks: dict[asyncio.Future[_Upstream], BackendState] = {}
        queue = list(order)
        tried: list[int] = []
        extended = False
        retries_left = cfg.max_retries
        last: _Retryable | None = None

        def candidates() -> bool:
            """Whether another backend is left to try (the rest are ranked on first need)."""
            nonlocal extended
            if not queue and not extended:
                extended = True
                rest = Fleet.fill_order(pool.view, (), pool.view.n_nodes)
                queue.extend(r for r in rest if r not in tried)
            return bool(queue)

        def launch(is_hedge: bool) -> None:
            row = queue.pop(0)
            tried.append(row)
            b = self._launch(pool, row)
            tasks[asyncio.ensure_future(self._attempt(b, path, raw, params, headers, is_hedge))] = b

        launch(False)
        primary = pool.rows[order[0]]
        hedge_at: float | None = None
        if cfg.hedge_fraction > 0 and len(queue) > 0:
            if hedge is not None:
                delay: float | None = hedge.delay_s
                if hedge.target in queue:  # the strategy's hedge target goes next
                    queue.remove(hedge.target)
                if hedge.target not in tried and 0 <= hedge.target < pool.view.n_nodes:
                    queue.insert(0, hedge.target)
            else:
                delay = primary.ttfb_quantile(cfg.hedge_quantile)
            if delay is not None:
                hedge_at = loop.time() + max(cfg.hedge_min_delay_s, delay)
        try:
            while tasks:
                now = loop.time()
                if now >= deadline:
                    am.failed.inc()
                    raise ApiError(
                        504,
                        f"no backend answered within {cfg.request_timeout_s:g}s "
                        "(--request-timeout)",
                        "server_error",
                        code="backend_timeout",
                    )
                until = deadline if hedge_at is None else min(hedge_at, deadline)
                timeout = max(0.0, until - now)
                done, _ = await asyncio.wait(
                    tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if hedge_at is None or loop.time() < hedge_at:
                        continue  # the deadline: checked at the top of the loop
                    hedge_at = None
                    if candidates() and self.hedge_budget.spend():
                        am.hedges.inc()
                        launch(True)
                    continue
                for t in done:
                    b = tasks.pop(t)
                    exc = t.exception()
                    if exc is None:
                        up = t.result()
                        if up.hedge:
                            am.hedge_wins.inc()
                        return up  # the rest (even one that also just answered) is closed below
                    self._done(b)
                    if not isinstance(exc, _Retryable):
                        raise exc
                    last = exc
                    log.info("backend %s failed: %s", b.url, exc)
                    if b.record_failure(time.monotonic(), cfg):
                        EJECTIONS.labels(node=b.url).inc()
                        log.warning(
                            "backend %s ejected (%d consecutive failures)", b.url, cfg.eject_after
                        )
                        self.fleet.changed()
                    if retries_left > 0 and not tasks and candidates():
                        retries_left -= 1
                        am.retries.inc()
                        launch(False)
        finally:
            for t, b in tasks.items():
                t.cancel()
                t.add_done_callback(_close_late_winner)
                self._done(b)
        am.failed.inc()
        if last is not None and last.status != 502 and last.body:
            raise ApiError(
                last.status, _error_message(last.body), "server_error", code="backend_error"
            )
        raise ApiError(
            502,
            f"no backend could answer ({last}); tried {len(tried)} of {len(pool.rows)} backends",
            "server_error",
            code="backend_unavailable",
        )

    async def _relay(
        self, request: web.Request, up: _Upstream, params: CompletionParams
    ) -> web.StreamResponse:
        a = up.backend.adapter
        ctype = up.resp.headers.get("content-type", "application/json")
        if not ctype.startswith("text/event-stream"):
            try:
                body = up.first + await up.resp.read()
            except UpstreamError as e:
                raise ApiError(
                    502, f"backend answer broke off ({e})", "server_error", code="backend_error"
                ) from None
            if not a.passthrough and up.resp.status == 200:
                body = a.response(body, params)
            return web.Response(body=body, status=up.resp.status, headers={"Content-Type": ctype})
        resp = web.StreamResponse(
            status=up.resp.status, headers={"Content-Type": ctype, "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        buf = b""
        chunk = up.first
        try:
            while chunk:
                if a.passthrough:
                    await resp.write(chunk)
                else:
                    buf += chunk
                    *events, buf = buf.split(b"\n\n")
                    for ev in events:
                        if ev.startswith(b"data: ") and ev[6:] != b"[DONE]":
                            ev = b"data: " + a.event(ev[6:], params)
                        await resp.write(ev + b"\n\n")
                chunk = await up.resp.read_chunk()
        except UpstreamError as e:  # the client already has part of the answer: end it
            log.warning("backend %s broke off a stream: %s", up.backend.url, e)
        if buf.strip():
            await resp.write(buf)
        await resp.write_eof()
        return resp


def _close_late_winner(t: asyncio.Future[_Upstream]) -> None:
    if not t.cancelled() and t.exception() is None:
        t.result().resp.close()


def _error_message(body: bytes) -> str:
    try:
        err = json.loads(body)["error"]
        return str(err["message"] if isinstance(err, dict) else err)
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")
