"""Admission control: per-tenant token buckets and a hedge budget (both on an injected clock)."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

__all__ = ["HedgeBudget", "TenantBuckets"]


class TenantBuckets:
    """One token bucket per tenant key: ``rate`` tokens/s, at most ``burst`` stored.

    Keys beyond ``max_tenants`` evict the least recently seen one (its next request starts
    with a full bucket), so memory stays bounded whatever keys clients send.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        max_tenants: int = 10_000,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_tenants = max_tenants
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, key: str) -> float:
        """Take one token for ``key``; return 0 when admitted, else seconds until one is due."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_tenants:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """A Retry-After header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait_s)))


class HedgeBudget:
    """Caps hedges to ``fraction`` of requests: each request earns ``fraction`` of a hedge."""

    def __init__(self, fraction: float, cap: float = 10.0) -> None:
        self.fraction = fraction
        self.cap = max(1.0, cap * fraction)
        self.credit = 0.0

    def earn(self) -> None:
        """Called once per routed request."""
        self.credit = min(self.cap, self.credit + self.fraction)

    def spend(self) -> bool:
        """Take one hedge if the budget allows it."""
        if self.credit >= 1.0 - 1e-9:
            self.credit -= 1.0
            return True
        return False
