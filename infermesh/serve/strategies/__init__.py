"""Routing strategies shared by the router and the simulator.

Read :mod:`infermesh.serve.strategies.api` for the interface, ``registry`` for lookup by
name, ``host`` for the latency budget and fallback, and ``ab`` for A/B splits between two
strategies by a stable hash.
"""

from infermesh.serve.strategies.ab import AbSpec, arm_of, parse_ab
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
    "AbSpec",
    "CellSummary",
    "Decision",
    "FleetView",
    "Hedge",
    "Outcome",
    "RequestView",
    "Strategy",
    "StrategyError",
    "UnknownStrategy",
    "arm_of",
    "create",
    "default_registry",
    "known",
    "parse_ab",
]
