"""Observability: Prometheus metrics, OpenTelemetry tracing, shared label names (floor 2)."""
