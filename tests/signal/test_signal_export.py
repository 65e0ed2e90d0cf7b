"""Prometheus export of fused node state, read back from a real /metrics endpoint."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from infermesh.obs import metrics
from infermesh.obs.metrics import REGISTRY
from infermesh.signal import SampleBatch, SignalTable, create_collector
from infermesh.signal.export import SIGNALS, SignalCollector


def _table_with_fake_node(node: str, now: float) -> SignalTable:
    table = SignalTable()
    c = create_collector("fake_nvml", gpus=2)
    try:
        table.ingest_batch(node, SampleBatch.from_samples(c.collect(now)), now)
    finally:
        c.close()
    return table


def _scrape(table: SignalTable, now: float, max_age_s: float) -> dict:
    """The samples a scrape at ``now`` shows, by (name, sorted labels)."""
    collector = SignalCollector(clock=lambda: now)
    collector.attach(table, max_age_s)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


def test_gpu_gauges_carry_only_shared_labels() -> None:
    table = _table_with_fake_node("exp-a", 100.0)
    samples = _scrape(table, now=101.0, max_age_s=30.0)

    def get(name: str, labels: dict[str, str]) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert get("infermesh_gpu_utilization_ratio", {"node": "exp-a", "gpu": "1"}) == 0.5
    assert get("infermesh_gpu_temperature_celsius", {"node": "exp-a", "gpu": "0"}) == 55.0
    assert get("infermesh_gpu_nvlink_down", {"node": "exp-a", "gpu": "0"}) == 0.0
    assert get("infermesh_node_health", {"node": "exp-a"}) == 0.0
    assert get("infermesh_node_signal_age_seconds", {"node": "exp-a"}) == 1.0


def test_stale_series_disappear_from_the_exposition() -> None:
    table = SignalTable()
    table.ingest(
        "exp-b", ["gpu.util", "host.cpu_percent"], [0.3, 12.0], [0.0, 50.0], ["gpu=0", ""], 50
    )
    gpu = ("infermesh_gpu_utilization_ratio", (("gpu", "0"), ("node", "exp-b")))
    assert _scrape(table, now=51.0, max_age_s=100.0)[gpu] == 0.3
    samples = _scrape(table, now=51.0, max_age_s=10.0)
    assert gpu not in samples
    assert samples[("infermesh_host_cpu_percent", (("node", "exp-b"),))] == 12.0
    assert samples[("infermesh_node_stale_signals", (("node", "exp-b"),))] == 1.0
    table.forget("exp-b")
    assert not any(labels == (("node", "exp-b"),) for _, labels in _scrape(table, 51.0, 10.0))


def test_network_rates_are_summed_over_interfaces() -> None:
    table = SignalTable()
    rows = (["net.rx_bytes", "net.rx_bytes"], ["iface=eth0", "iface=ib0"])
    table.ingest("exp-c", rows[0], [0.0, 0.0], [0.0, 0.0], rows[1], 0.0)
    table.ingest("exp-c", rows[0], [100.0, 300.0], [1.0, 1.0], rows[1], 1.0)
    samples = _scrape(table, now=1.0, max_age_s=10.0)
    name = "infermesh_host_network_receive_bytes_per_second"
    assert samples[(name, (("node", "exp-c"),))] == 400.0


def test_a_quarantined_node_and_its_xids_are_visible_on_a_scraped_metrics_endpoint() -> None:
    table = SignalTable()
    table.ingest("exp-d", ["gpu.xid", "gpu.util"], [79.0, 0.1], [5.0, 5.0], ["gpu=3", "gpu=3"], 5)
    SIGNALS.attach(table, max_age_s=1e9)  # the process's collector, read at scrape time
    port = metrics.serve(0, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert found[("infermesh_node_health", (("node", "exp-d"),))] == 2.0
    assert found[("infermesh_gpu_xid_events", (("gpu", "3"), ("node", "exp-d")))] == 1.0
    SIGNALS.detach(table)
    assert REGISTRY.get_sample_value("infermesh_node_health", {"node": "exp-d"}) is None
