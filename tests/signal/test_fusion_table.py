"""Fusion: latest values with ages, EWMAs, counter rates, staleness, health, links."""

from __future__ import annotations

import math

import pytest

from infermesh.core.errors import UsageError
from infermesh.obs.metrics import REGISTRY
from infermesh.signal import SampleBatch, SignalTable
from infermesh.signal.api import Sample
from infermesh.signal.export import SIGNALS
from infermesh.signal.fusion import UnknownNode


def _ingest(table: SignalTable, node: str, rows: list[tuple[str, float, float, str]], at: float):
    names, values, ts, labels = (list(c) for c in zip(*rows, strict=True))
    return table.ingest(node, names, values, ts, labels, at)


def test_a_view_gives_the_latest_value_and_its_age_from_the_measurement_time() -> None:
    t = SignalTable()
    _ingest(t, "a", [("gpu.util", 0.5, 100.0, "gpu=0"), ("host.load1", 2.0, 101.0, "")], 102.0)
    view = t.view("a", max_age_s=10.0, now=105.0)
    assert view.value("gpu.util", "gpu=0") == 0.5
    assert view.series[("gpu.util", "gpu=0")].age_s == pytest.approx(5.0)
    assert view.series[("host.load1", "")].age_s == pytest.approx(4.0)
    assert view.stale == [] and view.last_received == 102.0


def test_signals_older_than_the_max_age_are_listed_as_stale() -> None:
    t = SignalTable()
    _ingest(t, "a", [("gpu.util", 0.5, 100.0, "gpu=0"), ("gpu.util", 0.7, 108.0, "gpu=1")], 108)
    view = t.view("a", max_age_s=5.0, now=110.0)
    assert view.value("gpu.util", "gpu=0") is None
    assert view.values("gpu.util") == {"gpu=1": 0.7}
    assert [(s.labels, s.age_s) for s in view.stale] == [("gpu=0", 10.0)]


def test_a_measurement_from_a_clock_ahead_of_ours_is_clamped_to_its_arrival() -> None:
    t = SignalTable()
    _ingest(t, "a", [("gpu.util", 0.5, 500.0, "gpu=0")], 100.0)
    assert t.view("a", 60.0, 100.0).series[("gpu.util", "gpu=0")].age_s == 0.0


def test_gauge_ewma_follows_the_time_constant() -> None:
    t = SignalTable(tau_s=10.0)
    _ingest(t, "a", [("gpu.util", 0.0, 0.0, "")], 0.0)
    _ingest(t, "a", [("gpu.util", 1.0, 10.0, "")], 10.0)
    s = t.view("a", 100.0, 10.0).series[("gpu.util", "")]
    assert s.value == 1.0
    assert s.ewma == pytest.approx(1.0 - math.exp(-1.0))
    assert s.rate is None


def test_counters_get_a_rate_and_a_reset_gives_no_rate() -> None:
    t = SignalTable(tau_s=1e-9)  # EWMA == last rate
    _ingest(t, "a", [("net.rx_bytes", 1000.0, 0.0, "iface=eth0")], 0.0)
    _ingest(t, "a", [("net.rx_bytes", 3000.0, 2.0, "iface=eth0")], 2.0)
    s = t.view("a", 100.0, 2.0).series[("net.rx_bytes", "iface=eth0")]
    assert s.rate == 1000.0 and s.ewma == pytest.approx(1000.0)
    _ingest(t, "a", [("net.rx_bytes", 10.0, 3.0, "iface=eth0")], 3.0)  # process restarted
    s = t.view("a", 100.0, 3.0).series[("net.rx_bytes", "iface=eth0")]
    assert s.value == 10.0 and s.rate is None


def test_late_samples_are_dropped_and_counted() -> None:
    t = SignalTable()
    _ingest(t, "late-node", [("gpu.util", 0.9, 10.0, "")], 10.0)
    accepted = _ingest(t, "late-node", [("gpu.util", 0.1, 5.0, ""), ("gpu.temp_c", 50, 5, "")], 11)
    assert accepted == 1
    assert t.view("late-node", 100.0, 11.0).value("gpu.util") == 0.9
    assert t.nodes["late-node"].late == 1
    SIGNALS.attach(t)  # the counters are read from the table when /metrics is scraped
    try:
        get = REGISTRY.get_sample_value
        assert get("infermesh_signal_late_samples_total", {"node": "late-node"}) == 1.0
        assert get("infermesh_signal_samples_total", {"node": "late-node"}) == 2
    finally:
        SIGNALS.detach(t)


def test_columns_of_different_lengths_are_refused_with_the_lengths() -> None:
    t = SignalTable()
    with pytest.raises(UsageError, match=r"names=2 values=1 ts=2 labels=2"):
        t.ingest("a", ["x", "y"], [1.0], [1.0, 2.0], ["", ""], 3.0)
    assert "a" not in t.nodes
    batch = SampleBatch(["x"], [1.0, 2.0], [1.0], [""])
    with pytest.raises(UsageError, match="columns differ in length"):
        batch.check()


def test_a_batch_round_trips_through_its_columns() -> None:
    samples = [Sample("gpu.util", 0.5, 1.0, "gpu=0"), Sample("host.load1", 1.5, 2.0)]
    batch = SampleBatch.from_samples(samples)
    assert len(batch) == 2
    assert batch.names == ["gpu.util", "host.load1"] and batch.labels == ["gpu=0", ""]
    assert list(batch) == samples


def test_unknown_nodes_and_bad_ages_are_named() -> None:
    t = SignalTable()
    _ingest(t, "known", [("gpu.util", 0.5, 1.0, "")], 1.0)
    with pytest.raises(UnknownNode, match=r"no telemetry from node 'ghost'; .*: known"):
        t.view("ghost", 5.0, 1.0)
    with pytest.raises(UsageError, match="max_age_s=-1 must be >= 0"):
        t.view("known", -1, 1.0)
    with pytest.raises(UsageError, match="tau_s=0 must be > 0"):
        SignalTable(tau_s=0)


def test_health_is_ok_without_bad_signals() -> None:
    t = SignalTable()
    _ingest(t, "a", [("gpu.temp_c", 60.0, 1.0, "gpu=0"), ("gpu.nvlink_up", 1, 1, "gpu=0")], 1)
    assert t.health("a") == ("ok", [])


@pytest.mark.parametrize(
    ("code", "status", "meaning"),
    [
        (48, "quarantine", "double-bit ECC error"),
        (79, "quarantine", "GPU fell off the bus"),
        (95, "quarantine", "uncontained ECC error"),
        (94, "degraded", "contained ECC error"),
    ],
)
def test_each_health_xid_sets_its_status_with_the_reason(code: int, status: str, meaning: str):
    t = SignalTable()
    _ingest(t, "a", [("gpu.xid", float(code), 0.0, "gpu=2")], 0.0)
    assert t.health("a") == (status, [f"GPU 2: XID {code} ({meaning}) at 1970-01-01 00:00:00 UTC"])


def test_an_application_xid_does_not_change_health() -> None:
    t = SignalTable()
    _ingest(t, "a", [("gpu.xid", 13.0, 0.0, "gpu=0")], 0.0)
    assert t.health("a") == ("ok", [])
    assert list(t.nodes["a"].xids) == [(0.0, "gpu=0", 13)]


def test_xids_stay_until_cleared_and_repeats_are_kept() -> None:
    t = SignalTable()
    _ingest(t, "a", [("gpu.xid", 79.0, 1.0, "gpu=0")], 1.0)
    _ingest(t, "a", [("gpu.xid", 79.0, 1.0, "gpu=0")], 2.0)  # the same event re-sent
    _ingest(t, "a", [("gpu.xid", 79.0, 5.0, "gpu=0"), ("gpu.util", 0.1, 50.0, "gpu=0")], 50.0)
    _ingest(t, "a", [("gpu.xid", 48.0, 3.0, "gpu=1")], 51.0)  # late, but an event is kept
    _ingest(t, "a", [("gpu.xid", 79.0, 1.0, "gpu=0")], 52.0)  # late and already known
    assert [code for _, _, code in t.nodes["a"].xids] == [79, 79, 48]
    assert t.nodes["a"].late == 0
    assert t.health("a")[0] == "quarantine"
    assert t.clear_events("a") == 3
    assert t.health("a") == ("ok", [])


def test_quarantine_lists_degraded_reasons_after_its_own() -> None:
    t = SignalTable(overheat_c=85.0)
    rows = [
        ("gpu.temp_c", 86.0, 1.0, "gpu=1"),
        ("gpu.lost", 1.0, 1.0, "gpu=3"),
        ("gpu.remap_failed", 1.0, 1.0, "gpu=4"),
        ("gpu.remapped_rows_pending", 1.0, 1.0, "gpu=5"),
        ("gpu.ecc_uncorrected", 3.0, 1.0, "gpu=6"),
    ]
    _ingest(t, "a", rows, 1.0)
    status, reasons = t.health("a")
    assert status == "quarantine"
    assert reasons == [
        "GPU 3: lost (NVML cannot reach it)",
        "GPU 4: row remapping failed; replace the GPU",
        "GPU 1: overheating at 86 C (limit 85 C)",
        "GPU 5: row remap pending; reset the GPU",
        "GPU 6: 3 uncorrected ECC errors",
    ]


def test_cached_health_follows_every_change_that_matters() -> None:
    t = SignalTable(overheat_c=85.0)
    _ingest(t, "a", [("gpu.temp_c", 60.0, 1.0, "gpu=0"), ("gpu.util", 0.5, 1.0, "gpu=0")], 1.0)
    assert t.health("a") == ("ok", [])
    _ingest(t, "a", [("gpu.temp_c", 61.0, 2.0, "gpu=0"), ("gpu.util", 0.9, 2.0, "gpu=0")], 2.0)
    assert t.health("a") == ("ok", [])
    _ingest(t, "a", [("gpu.temp_c", 86.0, 3.0, "gpu=0")], 3.0)
    assert t.health("a") == ("degraded", ["GPU 0: overheating at 86 C (limit 85 C)"])
    _ingest(t, "a", [("gpu.temp_c", 88.0, 4.0, "gpu=0")], 4.0)  # the reason tracks the value
    assert t.health("a") == ("degraded", ["GPU 0: overheating at 88 C (limit 85 C)"])
    _ingest(t, "a", [("gpu.temp_c", 70.0, 5.0, "gpu=0")], 5.0)
    assert t.health("a") == ("ok", [])
    _ingest(t, "a", [("gpu.ecc_uncorrected", 0.0, 6.0, "gpu=0")], 6.0)
    assert t.health("a") == ("ok", [])
    _ingest(t, "a", [("gpu.ecc_uncorrected", 2.0, 7.0, "gpu=0")], 7.0)
    assert t.health("a") == ("degraded", ["GPU 0: 2 uncorrected ECC errors"])
    _ingest(t, "a", [("gpu.xid", 79.0, 8.0, "gpu=0")], 8.0)
    assert t.health("a")[0] == "quarantine"
    t.health("a")[1].clear()  # a caller's copy: the cached reasons stay
    assert len(t.health("a")[1]) == 2
    t.clear_events("a")
    assert t.health("a") == ("degraded", ["GPU 0: 2 uncorrected ECC errors"])


def test_link_bandwidth_per_class_from_collective_timings() -> None:
    t = SignalTable(tau_s=10.0)
    bw = "comm.link_bandwidth_bytes_per_s"
    _ingest(t, "a", [(bw, 2e9, 0.0, "link=intra"), (bw, 1e8, 0.0, "link=inter")], 0.0)
    _ingest(t, "a", [(bw, 4e9, 10.0, "link=intra")], 10.0)
    links = t.links("a", now=12.0)
    assert set(links) == {"intra", "inter"}
    assert links["intra"].last_bytes_per_s == 4e9
    assert links["intra"].bytes_per_s == pytest.approx(2e9 + 2e9 * (1 - math.exp(-1)))
    assert links["inter"].age_s == 12.0


def test_a_node_that_left_is_forgotten() -> None:
    t = SignalTable()
    _ingest(t, "gone", [("gpu.util", 0.5, 1.0, "")], 1.0)
    t.forget("gone")
    with pytest.raises(UnknownNode):
        t.health("gone")


def test_fresh_lists_one_family_of_recent_series_without_building_a_view() -> None:
    t = SignalTable()
    rows = [
        ("comm.grad_bytes", 4096.0, 100.0, "job=j1"),
        ("comm.link_bandwidth_bytes_per_s", 1e9, 50.0, "link=inter"),  # 60 s old at 110
        ("gpu.util", 0.5, 100.0, "gpu=0"),
    ]
    _ingest(t, "a", rows, 100.0)
    wanted = {"comm.grad_bytes", "comm.link_bandwidth_bytes_per_s"}
    assert t.fresh("a", wanted, 30.0, 110.0) == [("comm.grad_bytes", "job=j1", 4096.0)]
    assert t.fresh("nobody", wanted, 30.0, 110.0) == []
