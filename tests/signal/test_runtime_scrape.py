"""Runtime collectors against real HTTP servers serving recorded /metrics outputs."""

from __future__ import annotations

import logging
import socket

import pytest

from infermesh.core.errors import UsageError
from infermesh.signal import Sample, create_collector
from infermesh.signal.runtime import RuntimeCollector
from tests.signal.conftest import MetricsServer


def _by_name(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels): s.value for s in samples}


def test_vllm_metrics_map_to_runtime_signals_per_model(metrics_server: MetricsServer) -> None:
    url = metrics_server.serve("vllm_1.prom", "vllm_2.prom")
    c = create_collector("runtime", url=url, kind="vllm")
    first = _by_name(c.collect(100.0))
    m = "model=llama-3-8b"
    assert first[("runtime.up", "")] == 1.0
    assert first[("runtime.requests_running", m)] == 3.0
    assert first[("runtime.requests_waiting", m)] == 5.0
    assert first[("runtime.kv_cache_usage", m)] == pytest.approx(0.42)
    assert first[("runtime.prefix_cache_queries", m)] == 12000.0
    assert first[("runtime.prefix_cache_hits", m)] == 4800.0
    assert first[("runtime.requests_total", m)] == 100.0  # stop + length + abort summed
    assert ("runtime.ttft_p50_s", m) not in first  # no interval yet at the first scrape
    second = _by_name(c.collect(101.0))
    assert second[("runtime.requests_waiting", m)] == 2.0
    # 20 new requests: 10 in (0.04, 0.06], 10 in (0.06, 0.08]
    assert second[("runtime.ttft_p50_s", m)] == pytest.approx(0.06)
    assert second[("runtime.ttft_p95_s", m)] == pytest.approx(0.078)


def test_every_sample_is_stamped_with_the_scrape_time(metrics_server: MetricsServer) -> None:
    c = RuntimeCollector(metrics_server.serve("vllm_1.prom"))
    assert {s.ts for s in c.collect(123.5)} == {123.5}


def test_auto_detection_recognises_each_runtime(metrics_server: MetricsServer) -> None:
    cases = {
        "vllm_1.prom": ("runtime.kv_cache_usage", "model=llama-3-8b", 0.42),
        "sglang_1.prom": ("runtime.kv_cache_usage", "model=Qwen/Qwen2.5-7B-Instruct", 0.28),
        "tgi_1.prom": ("runtime.requests_waiting", "", 6.0),
        "triton_1.prom": ("runtime.requests_waiting", "model=resnet50", 3.0),
    }
    for fixture, (name, labels, value) in cases.items():
        c = RuntimeCollector(metrics_server.serve(fixture), kind="auto")
        assert _by_name(c.collect(1.0))[(name, labels)] == pytest.approx(value), fixture


def test_sglang_running_queue_hit_rate_and_ttft(metrics_server: MetricsServer) -> None:
    c = RuntimeCollector(metrics_server.serve("sglang_1.prom", "sglang_2.prom"), kind="sglang")
    c.collect(1.0)
    got = _by_name(c.collect(2.0))
    m = "model=Qwen/Qwen2.5-7B-Instruct"
    assert got[("runtime.requests_running", m)] == 7.0
    assert got[("runtime.requests_waiting", m)] == 2.0
    assert got[("runtime.prefix_cache_hit_rate", m)] == pytest.approx(0.0075)
    assert got[("runtime.requests_total", m)] == 1100.0
    # 100 new requests, all in (0.1, 0.2]
    assert got[("runtime.ttft_p50_s", m)] == pytest.approx(0.15)
    assert got[("runtime.ttft_p95_s", m)] == pytest.approx(0.195)


def test_tgi_queue_time_is_the_mean_of_the_interval(metrics_server: MetricsServer) -> None:
    c = RuntimeCollector(metrics_server.serve("tgi_1.prom", "tgi_2.prom"), kind="tgi")
    c.collect(1.0)
    got = _by_name(c.collect(2.0))
    assert got[("runtime.requests_running", "")] == 3.0
    assert got[("runtime.requests_waiting", "")] == 1.0
    assert got[("runtime.requests_total", "")] == 250.0
    assert got[("runtime.queue_mean_s", "")] == pytest.approx(1.5 / 50)


def test_triton_queue_time_from_its_cumulative_counters(metrics_server: MetricsServer) -> None:
    c = RuntimeCollector(metrics_server.serve("triton_1.prom", "triton_2.prom"), kind="triton")
    c.collect(1.0)
    got = _by_name(c.collect(2.0))
    assert got[("runtime.requests_waiting", "model=resnet50")] == 8.0
    assert got[("runtime.requests_total", "model=resnet50")] == 1100.0
    assert got[("runtime.queue_mean_s", "model=resnet50")] == pytest.approx(0.005)
    # bert served no request in the interval: no queue time is invented for it
    assert ("runtime.queue_mean_s", "model=bert") not in got


def test_our_model_server_uses_vllm_names(metrics_server: MetricsServer) -> None:
    c = RuntimeCollector(metrics_server.serve("vllm_1.prom"), kind="infermesh", model="tiny")
    assert _by_name(c.collect(1.0))[("runtime.requests_running", "model=tiny")] == 3.0


def test_an_unreachable_runtime_reports_down_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    c = RuntimeCollector(f"http://127.0.0.1:{port}/metrics", timeout_s=1.0)
    with caplog.at_level(logging.WARNING, logger="infermesh.signal.runtime"):
        for _ in range(3):
            assert _by_name(c.collect(1.0)) == {("runtime.up", ""): 0.0}
    assert len([r for r in caplog.records if "failed" in r.message]) == 1


def test_a_bad_runtime_kind_or_url_names_the_fix() -> None:
    with pytest.raises(UsageError, match="unknown runtime kind 'vlm'; known: auto, infermesh"):
        RuntimeCollector("http://127.0.0.1:8000/metrics", kind="vlm")
    with pytest.raises(UsageError, match="must start with http://"):
        RuntimeCollector("127.0.0.1:8000")


def test_a_host_only_url_gets_the_metrics_path() -> None:
    assert RuntimeCollector("http://127.0.0.1:8000").url == "http://127.0.0.1:8000/metrics"
