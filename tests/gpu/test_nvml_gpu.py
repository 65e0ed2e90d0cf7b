"""NVML collector on a real GPU: values are plausible (skipped without an NVIDIA driver).

Run on a GPU machine: ``pytest -q -m gpu tests/gpu`` (about ten seconds).
"""

from __future__ import annotations

import time

import pytest

from infermesh.signal.nvml import NvmlCollector

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def collector():
    c = NvmlCollector()
    if not c.inventory().gpus:
        c.close()
        pytest.skip(f"no GPU: {c.inventory().no_gpu}")
    yield c
    c.close()


def test_inventory_describes_each_gpu(collector: NvmlCollector) -> None:
    inv = collector.inventory()
    assert inv.driver_version and inv.cuda_version
    for g in inv.gpus:
        assert g.uuid.startswith(("GPU-", "MIG-")) and g.name
        assert g.memory_total_bytes > 1024**3
        assert g.pci_bus_id
    n = len(inv.gpus)
    assert len(inv.topology) == n and all(len(row) == n for row in inv.topology)
    assert all(inv.topology[i][i] == "X" for i in range(n))


def test_collected_values_are_plausible(collector: NvmlCollector) -> None:
    collector.collect(time.time())
    time.sleep(1.0)
    samples = collector.collect(time.time())
    by = {(s.name, s.labels): s.value for s in samples}
    for g in collector.inventory().gpus:
        lab = f"gpu={g.index}"
        assert 0.0 <= by[("gpu.util", lab)] <= 1.0
        assert 0 < by[("gpu.mem_used_bytes", lab)] <= by[("gpu.mem_total_bytes", lab)]
        assert 10.0 <= by[("gpu.temp_c", lab)] <= 110.0
        if ("gpu.power_w", lab) in by:
            assert 1.0 < by[("gpu.power_w", lab)] <= 1.2 * by[("gpu.power_limit_w", lab)]
        assert by[("gpu.sm_clock_mhz", lab)] > 0
        assert by.get(("gpu.lost", lab), 0.0) == 0.0
    assert not any(s.name == "gpu.xid" for s in samples), "an XID on a healthy GPU?"


def test_a_busy_gpu_reports_utilization() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    c = NvmlCollector(xid_events=False)
    try:
        x = torch.randn(8192, 8192, device="cuda")
        deadline = time.monotonic() + 10.0
        util = 0.0
        while util == 0.0 and time.monotonic() < deadline:
            for _ in range(20):
                x = x @ x
                x = x / x.norm()
            samples = c.collect(time.time())
            util = max(s.value for s in samples if s.name == "gpu.util")
        torch.cuda.synchronize()
    finally:
        c.close()
    assert util > 0.0
