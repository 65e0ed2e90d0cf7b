"""Routing strategies shared by the router and the simulator.

Read :mod:`infermesh.serve.strategies.api` for the interface, ``registry`` for lookup by
name and ``host`` for the latency budget and fallback.
"""

from infermesh.serve.strategies.api import (
    CellSummary,
    Decision,
    FleetView,
    Hedge,
    Outcome,
    RequestView,
    Strategy,
    StrategyError,
    UnknownStrategy,
)
from infermesh.serve.strategies.registry import DEFAULT_SET, create, default_registry, known

__all__ = [
    "DEFAULT_SET",
    "CellSummary",
    "Decision",
    "FleetView",
    "Hedge",
    "Outcome",
    "RequestView",
    "Strategy",
    "StrategyError",
    "UnknownStrategy",
    "create",
    "default_registry",
    "known",
]
