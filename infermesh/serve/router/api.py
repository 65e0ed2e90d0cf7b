"""The router's configuration, its backends and where they come from.

A :class:`BackendSource` tells the router which backends exist; today there is
:class:`~infermesh.serve.router.sources.StaticBackendSource` (``--backends URL,URL``); a
coordinator-backed source (model servers registered through their node's agent) plugs into
the same protocol: ``backends()`` returns the current list and ``changes()`` yields whenever
it changed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from infermesh.core.errors import UsageError

__all__ = ["BackendSource", "BackendSpec", "RouterConfig", "parse_backends"]


@dataclass(frozen=True)
class BackendSpec:
    """One backend: base URL and the adapter that speaks its dialect.

    ``kind`` is an adapter name (``infermesh``, ``vllm``, ``sglang``, ``tgi``, ``triton``).
    ``model`` is only needed where the backend cannot list its models (Triton: taken from a
    URL ending in ``/v2/models/NAME``).
    """

    url: str
    kind: str = "vllm"
    model: str | None = None
    capacity: float = 8.0


def parse_backends(
    text: str, default_kind: str = "vllm", capacity: float = 8.0
) -> list[BackendSpec]:
    """Parse ``--backends``: comma-separated ``URL`` or ``KIND=URL`` items."""
    from infermesh.serve.router.adapters import known_adapters

    specs: list[BackendSpec] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        kind, _, url = item.rpartition("=") if "=" in item.split("://")[0] else ("", "", item)
        kind = kind or default_kind
        if kind not in known_adapters():
            raise UsageError(
                f"--backends: unknown backend kind {kind!r} in {item!r}; known: "
                f"{', '.join(known_adapters())} (write KIND=URL)"
            )
        if not url.startswith(("http://", "https://")):
            raise UsageError(
                f"--backends: {item!r} is not an http(s) URL; write e.g. http://127.0.0.1:8000"
            )
        url = url.rstrip("/")
        model = None
        if kind == "triton":
            base, sep, name = url.partition("/v2/models/")
            if not sep or not name:
                raise UsageError(
                    f"--backends: a Triton backend needs its model in the URL, e.g. "
                    f"triton=http://host:8000/v2/models/ensemble (got {item!r})"
                )
            url, model = base, name
        specs.append(BackendSpec(url=url, kind=kind, model=model, capacity=capacity))
    if not specs:
        raise UsageError("--backends is empty; give at least one URL, e.g. http://127.0.0.1:8000")
    if len({s.url for s in specs}) != len(specs):
        raise UsageError(f"--backends lists the same URL twice: {text!r}")
    return specs


@runtime_checkable
class BackendSource(Protocol):
    """Where backends come from (static list now, the coordinator later)."""

    async def backends(self) -> list[BackendSpec]:
        """The current backends."""
        ...

    def changes(self) -> AsyncIterator[None]:
        """Yields once each time :meth:`backends` would return something new."""
        ...


@dataclass
class RouterConfig:
    """Settings of one router (``infermesh router start`` flags)."""

    host: str = "127.0.0.1"
    """Address to listen on."""

    port: int = 8080
    """TCP port (0 picks a free one)."""

    tls_dir: str = ""
    """Serve HTTPS with the certificate bundle in this directory (``cert.pem``, ``key.pem``,
    ``ca.pem``; reloaded when the files change); empty: plain HTTP."""

    strategy: str = "power_of_two"
    """Routing strategy (a name from the strategy registry, or an alias such as ``hybrid``)."""

    strategy_options: dict[str, float] = field(default_factory=dict)
    """Options of the strategy (its ``defaults`` keys)."""

    ab_strategy: str | None = None
    """Second arm of an A/B split; None for no split."""

    ab_fraction: float = 0.5
    """Share of traffic (by stable hash of the API key, else of the prompt) sent to arm B."""

    decision_budget_s: float = 0.002
    """A strategy decision slower than this is replaced by round robin (and counted)."""

    scrape_interval_s: float = 0.1
    """How often each backend's /metrics is scraped for load (and /health probed)."""

    models_interval_s: float = 5.0
    """How often each backend's model list is refreshed."""

    hedge_quantile: float = 0.95
    """Hedge after this quantile of the primary backend's observed time to first byte."""

    hedge_fraction: float = 0.1
    """At most this share of requests is hedged (0 disables router hedging)."""

    hedge_min_delay_s: float = 0.005
    """Never hedge sooner than this."""

    max_retries: int = 2
    """Further backends tried after a connect error or a 5xx before the first byte."""

    eject_after: int = 3
    """Consecutive failures that eject a backend."""

    eject_base_s: float = 1.0
    """First ejection lasts this long; each further one doubles it (up to ``eject_max_s``)."""

    eject_max_s: float = 30.0
    """Longest ejection."""

    tenant_rate: float = 0.0
    """Requests per second per API key (0: no per-tenant limit)."""

    tenant_burst: float = 20.0
    """Bucket size per API key."""

    max_inflight: int = 4096
    """Requests in flight through the router before it answers 429."""

    saturation_load: float = 0.0
    """Answer 429 when every backend's (queued + running) / capacity exceeds this (0: off)."""

    max_body_bytes: int = 1 << 20
    """Largest request body (413 beyond it)."""

    request_timeout_s: float = 600.0
    """Upper bound on one request end to end."""

    slo_s: float = 10.0
    """Latency objective given to strategies that read it."""

    prefix_chars: int = 64
    """Leading prompt characters hashed into the prefix group (prefix affinity)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.ab_fraction <= 1.0:
            raise UsageError(f"--ab-fraction must be in [0, 1], got {self.ab_fraction}")
        if not 0.0 < self.hedge_quantile < 1.0:
            raise UsageError(f"--hedge-quantile must be in (0, 1), got {self.hedge_quantile}")
        if not 0.0 <= self.hedge_fraction <= 1.0:
            raise UsageError(f"--hedge-fraction must be in [0, 1], got {self.hedge_fraction}")
        for name in ("max_retries", "eject_after", "max_inflight"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
        if self.scrape_interval_s <= 0:
            raise UsageError(f"--scrape-interval must be > 0, got {self.scrape_interval_s}")
        if self.tenant_rate < 0 or self.tenant_burst < 1:
            raise UsageError("--tenant-rate must be >= 0 and --tenant-burst >= 1")
