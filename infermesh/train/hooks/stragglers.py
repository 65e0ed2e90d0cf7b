"""Straggler detection from per-rank busy time (pure; no torch).

Every window (the hook's re-planning interval) each rank reports its mean *busy* time per
step: step time minus time spent in collectives. In a synchronous data-parallel job every
rank's step takes as long as the slowest one's, so the fast ranks wait inside collectives
and the slow one does not: busy time singles the straggler out. A rank whose busy time is
above ``factor`` times the median of the other ranks' for ``windows`` windows in a row is
reported once (and again only after it recovered).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

__all__ = ["StragglerDetector", "StragglerEvent"]


@dataclass(frozen=True)
class StragglerEvent:
    """A rank found slower than the others for ``windows`` consecutive windows."""

    rank: int
    step: int
    busy_s: float
    """The rank's mean busy seconds per step in the last window."""
    others_median_s: float
    """The median of the other ranks' busy seconds per step."""

    def describe(self) -> str:
        ratio = self.busy_s / self.others_median_s if self.others_median_s > 0 else float("inf")
        return (
            f"rank {self.rank} is a straggler at step {self.step}: busy {self.busy_s * 1e3:.1f} "
            f"ms/step, {ratio:.1f}x the other ranks' median {self.others_median_s * 1e3:.1f} ms"
        )


class StragglerDetector:
    """Counts consecutive slow windows per rank; reports a rank when the count reaches N."""

    def __init__(self, world: int, factor: float = 1.5, windows: int = 3) -> None:
        if factor <= 1:
            raise ValueError(f"straggler factor must be > 1, got {factor}")
        if windows < 1:
            raise ValueError(f"straggler windows must be >= 1, got {windows}")
        self.factor, self.windows = factor, windows
        self.slow_windows = [0] * world
        self.reported: set[int] = set()

    def update(self, step: int, busy_s: list[float]) -> list[StragglerEvent]:
        """Feed one window's busy seconds per rank; return the ranks that just became stragglers."""
        events = []
        for rank, busy in enumerate(busy_s):
            others = busy_s[:rank] + busy_s[rank + 1 :]
            median = statistics.median(others) if others else busy
            if others and busy > self.factor * median:
                self.slow_windows[rank] += 1
            else:
                self.slow_windows[rank] = 0
                self.reported.discard(rank)
            if self.slow_windows[rank] >= self.windows and rank not in self.reported:
                self.reported.add(rank)
                events.append(StragglerEvent(rank, step, busy, median))
        return events
