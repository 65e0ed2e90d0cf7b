"""Prometheus metrics: one registry per process, shared label names, an HTTP endpoint.

Components declare their metrics through :func:`counter`, :func:`gauge` and
:func:`histogram`, which check the label names against :data:`~infermesh.obs.labels.LABELS`
and return the existing metric when a name is declared twice (so a module can be imported
by several components without clashing). :func:`serve` exposes ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from infermesh.obs.labels import check_labels

logger = logging.getLogger(__name__)

__all__ = ["REGISTRY", "counter", "gauge", "histogram", "serve"]

REGISTRY = CollectorRegistry(auto_describe=True)
"""The process's registry; tests read it with ``REGISTRY.get_sample_value``."""

_lock = threading.Lock()
_metrics: dict[str, Any] = {}
M = TypeVar("M", Counter, Gauge, Histogram)


def _declare(kind: type[M], name: str, doc: str, labels: tuple[str, ...], **kw: Any) -> M:
    check_labels(labels)
    with _lock:
        existing = _metrics.get(name)
        if existing is not None:
            if not isinstance(existing, kind) or tuple(existing._labelnames) != labels:
                raise ValueError(f"metric {name!r} already declared with other type or labels")
            return existing
        metric = kind(name, doc, labelnames=labels, registry=REGISTRY, **kw)
        _metrics[name] = metric
        return metric


def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
    return _declare(Counter, name, doc, labels)


def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
    return _declare(Gauge, name, doc, labels)


def histogram(
    name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...] | None = None
) -> Histogram:
    kw = {"buckets": buckets} if buckets else {}
    return _declare(Histogram, name, doc, labels, **kw)


def serve(port: int, addr: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` on ``addr:port`` in a daemon thread; return the bound port."""
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    bound = int(server.server_port)
    logger.info("metrics on http://%s:%s/metrics", addr, bound)
    return bound
