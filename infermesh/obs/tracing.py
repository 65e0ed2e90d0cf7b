"""OpenTelemetry tracing: one tracer provider per process, exporters chosen explicitly.

Spans are always created (cheap); where they go is configured once:

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` set and ``opentelemetry-exporter-otlp`` installed: OTLP;
- :func:`add_exporter` (tests use an in-memory exporter);
- otherwise nowhere.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

logger = logging.getLogger(__name__)

__all__ = ["add_exporter", "exporting", "get_tracer"]

_provider: TracerProvider | None = None
_exporting = False


def _get_provider() -> TracerProvider:
    global _provider
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": "infermesh"}))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                    OTLPSpanExporter,
                )
                from opentelemetry.sdk.trace.export import BatchSpanProcessor

                _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
                global _exporting
                _exporting = True
            except ImportError:
                logger.warning(
                    "OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp is "
                    "not installed; spans are not exported (pip install "
                    "opentelemetry-exporter-otlp)"
                )
    return _provider


def add_exporter(exporter: SpanExporter) -> None:
    """Send every finished span to ``exporter`` as well (synchronously)."""
    global _exporting
    _get_provider().add_span_processor(SimpleSpanProcessor(exporter))
    _exporting = True


def exporting() -> bool:
    """Whether finished spans go anywhere (hot paths skip their spans otherwise)."""
    _get_provider()
    return _exporting


def get_tracer(name: str) -> trace.Tracer:
    """A tracer of InferMesh's provider (independent of the global OpenTelemetry one)."""
    return _get_provider().get_tracer(name)
