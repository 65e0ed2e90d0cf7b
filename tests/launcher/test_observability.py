"""The launcher's Prometheus endpoint and OpenTelemetry spans, read as an operator would."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from infermesh.obs.labels import check_labels
from infermesh.obs.metrics import counter
from tests.launcher.conftest import BIN, launcher_env, script


def test_metric_labels_must_come_from_the_shared_vocabulary():
    with pytest.raises(ValueError, match="'request_id' is not in the shared vocabulary"):
        check_labels(("node", "request_id"))
    first = counter("infermesh_test_declared_twice", "x", ("node",))
    assert counter("infermesh_test_declared_twice", "x", ("node",)) is first
    with pytest.raises(ValueError, match="already declared"):
        counter("infermesh_test_declared_twice", "x", ("job",))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_metrics_endpoint_shows_workers_and_heartbeat_ages_while_running(tmp_path: Path):
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "infermesh-run"),
            "--nproc-per-node",
            "2",
            "--local-addr",
            "127.0.0.1",
            "--rdzv-id",
            "obs",
            "--standalone",
            "--metrics-port",
            str(port),
            script("wait_for_go.py"),
            str(tmp_path),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=launcher_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready_{r}").exists() for r in (0, 1)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
        body = ""
        while 'rank="1"} ' not in body:
            assert time.monotonic() < deadline, body
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            body = body.decode()
        (tmp_path / "go").touch()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert proc.returncode == 0, err
    job = next(line for line in body.splitlines() if line.startswith("infermesh_launcher_workers{"))
    assert 'node="127.0.0.1"' in job and job.endswith(" 2.0")
    ages = [
        line
        for line in body.splitlines()
        if line.startswith("infermesh_launcher_heartbeat_age_seconds{")
    ]
    assert [line.split('rank="')[1][0] for line in ages] == ["0", "1"]
    assert all(float(line.rsplit(" ", 1)[1]) < 30 for line in ages)
    assert "infermesh_launcher_rendezvous_seconds_count" in body
    # the ages come from the workers' own beats: each wrote its step into its heartbeat file
    beats = sorted(tmp_path.glob("runs/*/127.0.0.1/heartbeats/attempt_0/rank_*"))
    assert [p.name for p in beats] == ["rank_0", "rank_1"]
    assert all(int(p.read_text().split()[0]) >= 0 for p in beats)


def test_a_launch_records_rendezvous_start_and_restart_spans(tmp_path: Path, monkeypatch):
    from infermesh.obs.tracing import add_exporter
    from infermesh.train.launcher.main import main

    exporter = InMemorySpanExporter()
    add_exporter(exporter)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM")
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = main(
            [
                "--standalone",
                "--nproc-per-node",
                "2",
                "--max-restarts",
                "1",
                "--worker-start",
                "exec",
                "--local-addr",
                "127.0.0.1",
                script("fail_once.py"),
            ]
        )
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert code == 0
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names.count("rendezvous") == 2 and names.count("start_workers") == 2
    assert names.count("restart_workers") == 1 and names.count("launch") == 1
    restart = next(s for s in spans if s.name == "restart_workers")
    assert restart.attributes["reason"] == "FAILED"
    assert restart.attributes["node"] == "127.0.0.1"
    launch = next(s for s in spans if s.name == "launch")
    assert all(
        s.context.trace_id == launch.context.trace_id
        for s in spans
        if s.name in ("rendezvous", "start_workers")
    )
