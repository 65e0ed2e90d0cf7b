"""The node agent: registration, heartbeats with telemetry, and the jobs it runs."""
