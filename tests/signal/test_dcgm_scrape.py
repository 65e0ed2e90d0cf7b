"""dcgm-exporter collector against a real HTTP server serving a recorded exposition."""

from __future__ import annotations

import pytest

from infermesh.signal import CollectorError, Sample, SignalTable, create_collector
from infermesh.signal.dcgm import DcgmCollector
from infermesh.signal.fakes import FakeDcgm
from tests.signal.conftest import MetricsServer

MIB = 1024 * 1024


def _by_name(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels): s.value for s in samples}


def test_dcgm_fields_map_to_gpu_signals_in_our_units(metrics_server: MetricsServer) -> None:
    c = DcgmCollector(metrics_server.serve("dcgm_exporter.prom"))
    got = _by_name(c.collect(50.0))
    assert got[("dcgm.up", "")] == 1.0
    assert got[("gpu.util", "gpu=0")] == pytest.approx(0.87)
    assert got[("gpu.mem_used_bytes", "gpu=0")] == 60000 * MIB
    assert got[("gpu.mem_total_bytes", "gpu=0")] == (60000 + 20950 + 530) * MIB
    assert got[("gpu.temp_c", "gpu=1")] == 93.0
    assert got[("gpu.power_w", "gpu=0")] == pytest.approx(512.3)
    assert got[("gpu.sm_active", "gpu=0")] == pytest.approx(0.71)
    assert got[("gpu.tensor_active", "gpu=0")] == pytest.approx(0.42)
    assert got[("gpu.dram_active", "gpu=0")] == pytest.approx(0.55)
    assert got[("gpu.pcie_tx_bytes_per_s", "gpu=0")] == pytest.approx(1.2e9)
    assert got[("gpu.nvlink_rx_bytes_per_s", "gpu=0")] == pytest.approx(4.9e10)
    assert got[("gpu.thermal_throttle", "gpu=1")] == 1.0
    assert got[("gpu.thermal_throttle", "gpu=0")] == 0.0
    assert got[("gpu.ecc_uncorrected", "gpu=1")] == 2.0
    assert got[("gpu.remapped_rows_pending", "gpu=1")] == 1.0
    assert got[("gpu.util", "gpu=0,mig=7")] == pytest.approx(0.55)


def test_the_last_xid_value_becomes_one_event_not_one_per_scrape(
    metrics_server: MetricsServer,
) -> None:
    c = DcgmCollector(metrics_server.serve("dcgm_exporter.prom"))
    first = [s for s in c.collect(1.0) if s.name == "gpu.xid"]
    again = [s for s in c.collect(2.0) if s.name == "gpu.xid"]
    assert [(s.labels, s.value) for s in first] == [("gpu=1", 79.0)]
    assert again == []


def test_dcgm_signals_quarantine_the_node_with_the_reasons(metrics_server: MetricsServer) -> None:
    c = DcgmCollector(metrics_server.serve("dcgm_exporter.prom"))
    table = SignalTable()
    samples = c.collect(10.0)
    table.ingest(
        "gpu-node-07",
        [s.name for s in samples],
        [s.value for s in samples],
        [s.ts for s in samples],
        [s.labels for s in samples],
        10.0,
    )
    status, reasons = table.health("gpu-node-07")
    assert status == "quarantine"
    assert reasons[0].startswith("GPU 1: XID 79 (GPU fell off the bus)")
    assert "GPU 1: overheating at 93 C (limit 90 C)" in reasons
    assert "GPU 1: 2 uncorrected ECC errors" in reasons


def test_an_unreachable_exporter_reports_dcgm_down() -> None:
    c = DcgmCollector("http://127.0.0.1:9", timeout_s=0.5)
    assert c.url == "http://127.0.0.1:9/metrics"
    assert _by_name(c.collect(3.0)) == {("dcgm.up", ""): 0.0}


def test_the_dcgm_collector_needs_exactly_one_source() -> None:
    with pytest.raises(CollectorError, match="exactly one of url"):
        DcgmCollector()
    with pytest.raises(CollectorError, match="exactly one of url"):
        DcgmCollector("http://127.0.0.1:9400", source=lambda: "")


def test_fake_dcgm_replays_its_script_and_drops_a_dead_gpu() -> None:
    fake = FakeDcgm(2)
    fake.gpus[0].util = [10.0, 20.0]
    c = DcgmCollector(source=fake)
    assert _by_name(c.collect(1.0))[("gpu.util", "gpu=0")] == pytest.approx(0.10)
    fake.dead.add(1)
    got = _by_name(c.collect(2.0))
    assert got[("gpu.util", "gpu=0")] == pytest.approx(0.20)
    assert ("gpu.util", "gpu=1") not in got


def test_fake_dcgm_is_chosen_by_name_only() -> None:
    c = create_collector("fake_dcgm", gpus=3)
    assert c.name == "fake_dcgm"
    assert len([s for s in c.collect(1.0) if s.name == "gpu.util"]) == 3
