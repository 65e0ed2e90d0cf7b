"""Runs a strategy under a latency budget and falls back to a safe strategy when needed.

The router and the simulator call strategies through :class:`StrategyHost`. An exception
in the strategy, or an empty/invalid decision, always falls back to ``round_robin`` and
is counted. Overrunning the latency budget is always counted; it changes the decision only
when ``enforce_budget`` is true, because a decision that depends on wall-clock time would
make simulator runs irreproducible (the router enforces it, the simulator by default does
not).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from infermesh.serve.strategies.api import (
    Decision,
    FleetView,
    Outcome,
    RequestView,
    Strategy,
)
from infermesh.serve.strategies.simple import RoundRobin

__all__ = ["HostCounters", "StrategyHost"]

log = logging.getLogger(__name__)


@dataclass
class HostCounters:
    """What the host counted: decisions, errors, overruns and fallbacks taken."""

    decisions: int = 0
    errors: int = 0
    invalid: int = 0
    overruns: int = 0
    fallbacks: int = 0
    strategy_time_s: float = 0.0


class StrategyHost:
    """Calls ``strategy.decide`` with a latency budget and a round-robin fallback."""

    def __init__(
        self,
        strategy: Strategy,
        budget_s: float = 0.002,
        enforce_budget: bool = False,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.strategy = strategy
        self.fallback: Strategy = RoundRobin()
        self.budget_s = budget_s
        self.enforce_budget = enforce_budget
        self.timer = timer
        self.counters = HostCounters()
        #: False when the strategy keeps the default no-op observe (hosts may skip feedback)
        self.wants_feedback = type(strategy).observe is not Strategy.observe

    def decide(self, request: RequestView, view: FleetView, now: float) -> Decision:
        """Return the strategy's decision, or the fallback's when it fails."""
        c = self.counters
        c.decisions += 1
        t0 = self.timer()
        try:
            decision = self.strategy.decide(request, view, now)
        except Exception:  # a strategy bug must not take the router down
            c.errors += 1
            log.exception("strategy %s failed; using round_robin", self.strategy.name)
            return self._fallback(request, view, now)
        elapsed = self.timer() - t0
        c.strategy_time_s += elapsed
        targets = decision.targets
        if decision.admit and (
            not targets or min(targets) < 0 or max(targets) >= view.cell_of.shape[0]
        ):
            c.invalid += 1
            return self._fallback(request, view, now)
        if elapsed > self.budget_s:
            c.overruns += 1
            if self.enforce_budget:
                return self._fallback(request, view, now)
        return decision

    def _fallback(self, request: RequestView, view: FleetView, now: float) -> Decision:
        self.counters.fallbacks += 1
        return self.fallback.decide(request, view, now)

    def observe(self, outcome: Outcome) -> None:
        """Pass feedback to the strategy (errors here are counted, never raised)."""
        try:
            self.strategy.observe(outcome)
        except Exception:
            self.counters.errors += 1
            log.exception("strategy %s failed in observe()", self.strategy.name)
