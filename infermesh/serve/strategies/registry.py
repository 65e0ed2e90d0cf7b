"""String-keyed strategy registry with lazy imports and entry-point discovery.

Built-in strategies are registered as ``"module:Class"`` paths and imported on first use.
Third-party packages add strategies through the ``infermesh.strategies`` entry-point group
(name = strategy name, value = ``"module:Class"``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from infermesh.serve.strategies.api import Strategy, StrategyError, UnknownStrategy

__all__ = ["ENTRY_POINT_GROUP", "StrategyRegistry", "create", "default_registry", "known"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "infermesh.strategies"

_PKG = "infermesh.serve.strategies"
BUILTINS: dict[str, str] = {
    "baseline_rr": f"{_PKG}.simple:RoundRobin",
    "round_robin": f"{_PKG}.simple:RoundRobin",
    "random": f"{_PKG}.simple:RandomChoice",
    "least_loaded": f"{_PKG}.simple:LeastLoaded",
    "power_of_two": f"{_PKG}.simple:PowerOfTwo",
    "heuristic": f"{_PKG}.heuristic:Heuristic",
    "prefix_affinity": f"{_PKG}.prefix_affinity:PrefixAffinity",
    "mesh": f"{_PKG}.mesh:Mesh",
    "mesh_hedge": f"{_PKG}.mesh:MeshHedge",
    "adaptive_mesh": f"{_PKG}.mesh:AdaptiveMesh",
    "predictive_mesh": f"{_PKG}.predictive:PredictiveMesh",
    "hybrid_mesh": f"{_PKG}.predictive:HybridMesh",
    "ml_enhanced_mesh": f"{_PKG}.ml_mesh:MlEnhancedMesh",
    # short names the router's users type (issue 6): the same classes as above
    "predictive": f"{_PKG}.predictive:PredictiveMesh",
    "hybrid": f"{_PKG}.predictive:HybridMesh",
}

#: The strategies a simulator run compares when none are named (``round_robin`` is the
#: same class as ``baseline_rr`` and is left out to avoid a duplicate).
DEFAULT_SET: tuple[str, ...] = (
    "baseline_rr",
    "random",
    "least_loaded",
    "power_of_two",
    "heuristic",
    "prefix_affinity",
    "mesh",
    "mesh_hedge",
    "adaptive_mesh",
    "predictive_mesh",
    "hybrid_mesh",
    "ml_enhanced_mesh",
)


class StrategyRegistry:
    """Maps strategy names to ``"module:Class"`` paths; imports a class when it is created."""

    def __init__(self, builtins: Mapping[str, str], group: str = ENTRY_POINT_GROUP) -> None:
        self._paths: dict[str, str] = dict(builtins)
        self._group = group
        self._discovered = False

    def register(self, name: str, path: str) -> None:
        """Register ``name`` as ``"module:Class"``; an existing name is replaced."""
        if ":" not in path:
            raise StrategyError(f"strategy path {path!r} must look like 'package.module:Class'")
        self._paths[name] = path

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for ep in entry_points(group=self._group):
            if ep.name in self._paths:
                log.warning("entry point %s=%s shadows a built-in strategy", ep.name, ep.value)
            self._paths[ep.name] = ep.value

    def known(self) -> list[str]:
        """All registered names, sorted."""
        self._discover()
        return sorted(self._paths)

    def resolve(self, name: str) -> type[Strategy]:
        """Import and return the class registered as ``name``."""
        self._discover()
        path = self._paths.get(name)
        if path is None:
            raise UnknownStrategy(name, list(self._paths))
        module_name, _, attr = path.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise StrategyError(f"strategy {name!r} ({path}) is not a Strategy subclass")
        return cls

    def create(
        self, name: str, options: Mapping[str, Any] | None = None, seed: int = 0
    ) -> Strategy:
        """Instantiate the strategy registered as ``name``."""
        return self.resolve(name)(options, seed)


default_registry = StrategyRegistry(BUILTINS)


def known() -> list[str]:
    """Names of all strategies in the default registry."""
    return default_registry.known()


def create(name: str, options: Mapping[str, Any] | None = None, seed: int = 0) -> Strategy:
    """Create a strategy from the default registry."""
    return default_registry.create(name, options, seed)
