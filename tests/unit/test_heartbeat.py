"""The worker-side heartbeat: a no-op without the launcher, a rate-limited file write with it."""

from __future__ import annotations

import os
from pathlib import Path

from infermesh.train import heartbeat
from infermesh.train.heartbeat import HEARTBEAT_ENV


def test_without_the_launcher_heartbeat_does_nothing(monkeypatch, tmp_path: Path):
    monkeypatch.delenv(HEARTBEAT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    heartbeat(1)
    assert list(tmp_path.iterdir()) == []


def test_a_beat_records_the_step_and_later_beats_are_rate_limited(monkeypatch, tmp_path: Path):
    path = tmp_path / "rank_0"
    monkeypatch.setenv(HEARTBEAT_ENV, str(path))
    heartbeat(7)
    step, when = path.read_text().split()[:2]
    assert step == "7" and float(when) > 0
    os.utime(path, (0, 0))
    heartbeat(8)  # within the minimum interval: no write, the file keeps its old time
    assert path.read_text().split()[0] == "7" and path.stat().st_mtime == 0
