"""Straggler detection from per-rank busy time."""

from __future__ import annotations

import pytest

from infermesh.train.hooks.stragglers import StragglerDetector

FAST, SLOW = 0.10, 0.25


def test_a_rank_slower_than_the_others_for_three_windows_is_reported_once() -> None:
    detector = StragglerDetector(world=4, factor=1.5, windows=3)
    reported = [detector.update(step, [FAST, FAST, SLOW, FAST]) for step in (10, 20, 30, 40)]
    assert [len(r) for r in reported] == [0, 0, 1, 0]
    event = reported[2][0]
    assert (event.rank, event.step) == (2, 30)
    assert "rank 2 is a straggler at step 30" in event.describe()


def test_one_slow_window_is_not_a_straggler() -> None:
    detector = StragglerDetector(world=4, factor=1.5, windows=3)
    busy = [[FAST, SLOW, FAST, FAST], [FAST] * 4, [FAST, SLOW, FAST, FAST], [FAST] * 4]
    assert all(detector.update(i, b) == [] for i, b in enumerate(busy))


def test_a_straggler_that_recovered_is_reported_again_after_a_new_slow_run() -> None:
    detector = StragglerDetector(world=2, factor=1.5, windows=1)
    assert [e.rank for e in detector.update(1, [SLOW, FAST])] == [0]
    assert detector.update(2, [SLOW, FAST]) == []
    assert detector.update(3, [FAST, FAST]) == []
    assert [e.rank for e in detector.update(4, [SLOW, FAST])] == [0]


def test_a_factor_of_one_or_less_is_refused() -> None:
    with pytest.raises(ValueError, match=r"factor must be > 1, got 1\.0"):
        StragglerDetector(world=2, factor=1.0)
