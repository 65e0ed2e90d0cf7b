"""The real NVML collector running on the scriptable FakeNvml (the hardware boundary)."""

from __future__ import annotations

import logging
import time

import pynvml
import pytest

from infermesh.core.errors import UsageError
from infermesh.signal import Sample, SampleBatch, SignalTable, create_collector
from infermesh.signal.fakes import FakeGpu, FakeNvml
from infermesh.signal.nvml import NvmlCollector


def _by_name(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels): s.value for s in samples}


def _wait_for_xid(c: NvmlCollector, timeout_s: float = 5.0) -> list[Sample]:
    """Collect until a gpu.xid sample appears (the event thread delivers it)."""
    deadline = time.monotonic() + timeout_s
    seen: list[Sample] = []
    while time.monotonic() < deadline:
        seen = c.collect(time.time())
        if any(s.name == "gpu.xid" for s in seen):
            return seen
        time.sleep(0.02)
    raise AssertionError("no XID sample within the time limit")


def test_inventory_lists_every_gpu_with_topology() -> None:
    with NvmlCollector(FakeNvml(4)) as c:
        inv = c.inventory()
    assert inv.no_gpu is None
    assert [g.index for g in inv.gpus] == [0, 1, 2, 3]
    assert inv.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert inv.gpus[0].memory_total_bytes == 80 * 1024**3
    assert inv.gpus[0].nvlinks == 18
    assert inv.gpus[2].uuid.endswith("000000000002")
    assert inv.driver_version and inv.cuda_version == "12.4"
    assert inv.topology[0] == ("X", "NV18", "NV18", "NV18")
    assert inv.topology[3][3] == "X"


def test_topology_without_nvlink_uses_the_pcie_common_ancestor() -> None:
    gpus = [FakeGpu(i, nvlinks=0) for i in range(4)]
    with NvmlCollector(FakeNvml(gpus)) as c:
        topo = c.inventory().topology
    assert topo[0] == ("X", "NODE", "SYS", "SYS")


def test_each_gpu_reports_the_documented_signals_in_our_units() -> None:
    fake = FakeNvml([FakeGpu(0, util=[30.0, 90.0], temp=61.0, power_mw=250_000.0)])
    with NvmlCollector(fake) as c:
        first = _by_name(c.collect(10.0))
        second = _by_name(c.collect(11.0))
    assert first[("gpu.util", "gpu=0")] == pytest.approx(0.30)
    assert second[("gpu.util", "gpu=0")] == pytest.approx(0.90)
    assert first[("gpu.temp_c", "gpu=0")] == 61.0
    assert first[("gpu.power_w", "gpu=0")] == 250.0
    assert first[("gpu.power_limit_w", "gpu=0")] == 700.0
    assert first[("gpu.mem_total_bytes", "gpu=0")] == 80 * 1024**3
    assert first[("gpu.pcie_tx_bytes_per_s", "gpu=0")] == 1000 * 1024
    assert first[("gpu.nvlink_up", "gpu=0,nvlink=17")] == 1.0
    assert second[("gpu.nvlink_tx_bytes", "gpu=0")] > first[("gpu.nvlink_tx_bytes", "gpu=0")]
    assert first[("gpu.mig_enabled", "gpu=0")] == 0.0
    assert first[("gpu.ecc_uncorrected", "gpu=0")] == 0.0


def test_an_injected_xid_arrives_as_an_event_and_quarantines_the_node() -> None:
    c = create_collector("fake_nvml", gpus=8, xid=[(3, 79, 2)])
    try:
        table = SignalTable()
        first = c.collect(time.time())
        assert not any(s.name == "gpu.xid" for s in first)
        samples = _wait_for_xid(c)
        for batch in (first, samples):
            table.ingest_batch("node-a", SampleBatch.from_samples(batch), time.time())
    finally:
        c.close()
    xids = [s for s in samples if s.name == "gpu.xid"]
    assert [(s.labels, s.value) for s in xids] == [("gpu=3", 79.0)]
    status, reasons = table.health("node-a")
    assert status == "quarantine"
    assert reasons[0].startswith("GPU 3: XID 79 (GPU fell off the bus)")


def test_a_contained_ecc_xid_only_degrades_the_node() -> None:
    fake = FakeNvml(2)
    with NvmlCollector(fake, event_wait_ms=50) as c:
        fake.inject_xid(1, 94)
        samples = _wait_for_xid(c)
    table = SignalTable()
    table.ingest_batch("n", SampleBatch.from_samples(samples), time.time())
    assert table.health("n") == ("degraded", [table.health("n")[1][0]])
    assert "XID 94 (contained ECC error)" in table.health("n")[1][0]


def test_a_dead_gpu_is_reported_lost_and_the_others_keep_reporting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="infermesh.signal.nvml"),
        NvmlCollector(FakeNvml(3, dead=[(1, 2)]), xid_events=False) as c,
    ):
        first = _by_name(c.collect(1.0))
        rounds = [_by_name(c.collect(float(t))) for t in range(2, 5)]
    assert ("gpu.lost", "gpu=1") not in first
    for got in rounds:
        assert got[("gpu.lost", "gpu=1")] == 1.0
        assert ("gpu.util", "gpu=1") not in got
        assert ("gpu.util", "gpu=0") in got and ("gpu.util", "gpu=2") in got
    assert len([r for r in caplog.records if "lost" in r.message]) == 1


def test_a_failed_nvlink_lane_is_reported_down_and_degrades_the_node() -> None:
    fake = FakeNvml(2)
    with NvmlCollector(fake, xid_events=False) as c:
        c.collect(1.0)
        fake.nvlink_fail(0, 5)
        got = c.collect(2.0)
    assert _by_name(got)[("gpu.nvlink_up", "gpu=0,nvlink=5")] == 0.0
    table = SignalTable()
    table.ingest_batch("n", SampleBatch.from_samples(got), 2.0)
    assert table.health("n") == ("degraded", ["GPU 0 NVLink 5: NVLink down"])


def test_mig_instances_are_listed_and_counted() -> None:
    fake = FakeNvml([FakeGpu(0, mig=True, mig_instances=3), FakeGpu(1)])
    with NvmlCollector(fake, xid_events=False) as c:
        inv = c.inventory()
        got = _by_name(c.collect(1.0))
    assert inv.gpus[0].mig_enabled and len(inv.gpus[0].mig_instances) == 3
    assert not inv.gpus[1].mig_enabled
    assert got[("gpu.mig_enabled", "gpu=0")] == 1.0
    assert got[("gpu.mig_instances", "gpu=0")] == 3.0


class _NoPowerNvml(FakeNvml):
    """A GPU whose driver does not support power readings."""

    power_calls = 0

    def nvmlDeviceGetPowerUsage(self, h: object) -> int:
        self.power_calls += 1
        raise pynvml.NVMLError_NotSupported()


def test_an_unsupported_query_is_tried_once_and_then_skipped() -> None:
    fake = _NoPowerNvml(1)
    with NvmlCollector(fake, xid_events=False) as c:
        for t in range(5):
            got = _by_name(c.collect(float(t)))
    assert fake.power_calls == 1
    assert ("gpu.power_w", "gpu=0") not in got
    assert ("gpu.temp_c", "gpu=0") in got


def test_without_a_driver_the_collector_says_no_gpu_once_and_collects_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="infermesh.signal.nvml"):
        c = create_collector("fake_nvml", driver=False)
        results = [c.collect(float(t)) for t in range(5)]
        c.close()
    assert results == [[]] * 5
    inv = c.inventory()
    assert not inv.has_gpus
    assert inv.no_gpu is not None and "no NVIDIA driver" in inv.no_gpu
    assert len([r for r in caplog.records if "no GPU" in r.message]) == 1


def test_fake_scripts_are_checked() -> None:
    with pytest.raises(UsageError, match="fake GPU index 9 out of range; there are 2 GPUs"):
        FakeNvml(2, xid=[(9, 79, 1)])
    with pytest.raises(UsageError, match="mig_instances needs mig=True"):
        FakeNvml([FakeGpu(0, mig_instances=2)])


def test_overheating_and_thermal_throttling_degrade_the_node() -> None:
    fake = FakeNvml([FakeGpu(0, temp=[70.0, 95.0], throttle=[0.0, 0x40])])
    table = SignalTable()
    with NvmlCollector(fake, xid_events=False) as c:
        for t in (1.0, 2.0):
            table.ingest_batch("n", SampleBatch.from_samples(c.collect(t)), t)
            if t == 1.0:
                assert table.health("n") == ("ok", [])
    status, reasons = table.health("n")
    assert status == "degraded"
    assert reasons == [
        "GPU 0: overheating at 95 C (limit 90 C)",
        "GPU 0: clocks thermally throttled",
    ]


def test_close_stops_the_event_thread() -> None:
    c = NvmlCollector(FakeNvml(2), event_wait_ms=50)
    thread = c._thread
    assert thread is not None and thread.is_alive()
    c.close()
    c.close()  # idempotent
    assert not thread.is_alive()
