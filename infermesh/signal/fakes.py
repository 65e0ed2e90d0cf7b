"""Scriptable fake GPU sources for tests and benchmarks: selected only by name.

:class:`FakeNvml` stands in for the ``pynvml`` module at the hardware boundary: the real
:class:`~infermesh.signal.nvml.NvmlCollector` runs on it unchanged. Each GPU's readings
come from a script -- a constant, or a list replayed one value per read (the last value is
held) -- and XID events and GPU deaths can be scheduled at a read count or injected at any
time. Constants and error classes are the real ones from ``pynvml``.

:class:`FakeDcgm` renders dcgm-exporter's Prometheus text from the same kind of script, for
the real :class:`~infermesh.signal.dcgm.DcgmCollector`.

Through the registry: ``create_collector("fake_nvml", gpus=8, xid=[(1, 79, 3)])`` (GPU 1
reports XID 79 at its third read) and ``dead=[(2, 5)]`` (GPU 2 is lost from its fifth read).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

from infermesh.core.errors import UsageError
from infermesh.signal.api import Collector

__all__ = [
    "FakeDcgm",
    "FakeGpu",
    "FakeNvml",
    "fake_dcgm_collector",
    "fake_nvml_collector",
]

Script = float | Sequence[float]


def _replay(gpu: FakeGpu | FakeDcgmGpu, what: str) -> float:
    """The next value of ``gpu``'s script ``what`` (the last one is held)."""
    script: Script = getattr(gpu, what)
    n = gpu._reads.get(what, 0)
    gpu._reads[what] = n + 1
    if isinstance(script, int | float):
        return float(script)
    if not script:
        raise UsageError(f"fake GPU {gpu.index}: script {what!r} is empty")
    return float(script[min(n, len(script) - 1)])


def _error(name: str) -> Exception:
    cls = getattr(pynvml, name)
    err: Exception = cls()
    return err


@dataclass
class FakeGpu:
    """One fake GPU and its scripts (percent, bytes, degrees, milliwatts, MHz, bitmasks)."""

    index: int
    name: str = "NVIDIA H100 80GB HBM3"
    memory_total: int = 80 * 1024**3
    util: Script = 50.0
    mem_util: Script = 20.0
    mem_used: Script = 10 * 1024**3
    temp: Script = 55.0
    power_mw: Script = 300_000.0
    power_limit_mw: float = 700_000.0
    sm_clock: Script = 1980.0
    mem_clock: Script = 2619.0
    throttle: Script = 0.0
    ecc_uncorrected: Script = 0.0
    remap_pending: Script = 0.0
    remap_failed: Script = 0.0
    pcie_kbps: Script = 1000.0
    nvlinks: int = 18
    nvlink_down: Sequence[int] = ()
    """Lanes that read as down (after start-up probing saw them up)."""
    nvlink_kib_per_read: float = 1024.0
    mig: bool = False
    mig_instances: int = 0
    _reads: dict[str, int] = field(default_factory=dict)

    @property
    def uuid(self) -> str:
        return f"GPU-fake0000-0000-0000-0000-{self.index:012d}"

    @property
    def bus_id(self) -> str:
        return f"00000000:{0x18 + self.index:02X}:00.0"

    def read(self, what: str) -> float:
        return _replay(self, what)


class _Handle:
    __slots__ = ("gpu", "mig")

    def __init__(self, gpu: int, mig: int = -1) -> None:
        self.gpu, self.mig = gpu, mig


class FakeNvml:
    """A ``pynvml`` look-alike with scripted GPUs.

    :param gpus: number of default :class:`FakeGpu` s, or the GPUs themselves.
    :param xid: ``(gpu, code, read)``: GPU ``gpu`` raises XID ``code`` at its ``read``-th
        utilization read (one per collection).
    :param dead: ``(gpu, read)``: GPU ``gpu`` is lost from its ``read``-th utilization read.
    :param driver: ``False`` acts as a machine without the NVIDIA library.
    """

    def __init__(
        self,
        gpus: int | Sequence[FakeGpu] = 8,
        *,
        xid: Sequence[tuple[int, int, int]] = (),
        dead: Sequence[tuple[int, int]] = (),
        driver: bool = True,
    ) -> None:
        self.gpus = [FakeGpu(i) for i in range(gpus)] if isinstance(gpus, int) else list(gpus)
        for g in self.gpus:
            if not g.mig and g.mig_instances:
                raise UsageError(f"fake GPU {g.index}: mig_instances needs mig=True")
        n = len(self.gpus)
        for gpu, *_ in (*xid, *dead):
            if not 0 <= gpu < n:
                raise UsageError(f"fake GPU index {gpu} out of range; there are {n} GPUs")
        self._xid_at = {(g, r): code for g, code, r in xid}
        self._dead_at = dict(dead)
        self.driver = driver
        self.initialized = 0
        self.lost: set[int] = set()
        self._events: deque[SimpleNamespace] = deque()
        self._cond = threading.Condition()
        self._registered: set[int] = set()
        self._util_reads = [0] * n

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("NVML_", "nvmlEventType", "NVMLError")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    # -- scripting --------------------------------------------------------------------------

    def inject_xid(self, gpu: int, code: int) -> None:
        """Deliver XID ``code`` on GPU ``gpu`` now (if its events are registered)."""
        with self._cond:
            if gpu in self._registered:
                self._events.append(
                    SimpleNamespace(device=_Handle(gpu), eventType=8, eventData=code)
                )
                self._cond.notify_all()

    def nvlink_fail(self, gpu: int, lane: int) -> None:
        """NVLink lane ``lane`` of GPU ``gpu`` reads as down from now on."""
        g = self.gpus[gpu]
        g.nvlink_down = (*g.nvlink_down, lane)

    def kill(self, gpu: int) -> None:
        """GPU ``gpu`` falls off the bus: every later call on it raises GpuIsLost."""
        self.lost.add(gpu)

    # -- the pynvml functions the collector uses ------------------------------------------

    def _gpu(self, h: _Handle) -> FakeGpu:
        if h.gpu in self.lost:
            raise _error("NVMLError_GpuIsLost")
        return self.gpus[h.gpu]

    def nvmlInit(self) -> None:
        if not self.driver:
            raise _error("NVMLError_LibraryNotFound")
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15-fake"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> _Handle:
        if not 0 <= i < len(self.gpus):
            raise _error("NVMLError_InvalidArgument")
        return _Handle(i)

    def nvmlDeviceGetIndex(self, h: _Handle) -> int:
        return h.gpu

    def nvmlDeviceGetUUID(self, h: _Handle) -> str:
        g = self._gpu(h)
        return g.uuid if h.mig < 0 else f"MIG-{g.uuid[4:]}-{h.mig}"

    def nvmlDeviceGetName(self, h: _Handle) -> str:
        return self._gpu(h).name

    def nvmlDeviceGetPciInfo(self, h: _Handle) -> SimpleNamespace:
        return SimpleNamespace(busId=self._gpu(h).bus_id.encode())

    def nvmlDeviceGetMemoryInfo(self, h: _Handle) -> SimpleNamespace:
        g = self._gpu(h)
        used = int(g.read("mem_used"))
        return SimpleNamespace(total=g.memory_total, used=used, free=g.memory_total - used)

    def nvmlDeviceGetUtilizationRates(self, h: _Handle) -> SimpleNamespace:
        n = self._util_reads[h.gpu] = self._util_reads[h.gpu] + 1
        if self._dead_at.get(h.gpu) == n:
            self.kill(h.gpu)
        code = self._xid_at.get((h.gpu, n))
        if code is not None:
            self.inject_xid(h.gpu, code)
        g = self._gpu(h)
        return SimpleNamespace(gpu=int(g.read("util")), memory=int(g.read("mem_util")))

    def nvmlDeviceGetTemperature(self, h: _Handle, sensor: int) -> int:
        return int(self._gpu(h).read("temp"))

    def nvmlDeviceGetPowerUsage(self, h: _Handle) -> int:
        return int(self._gpu(h).read("power_mw"))

    def nvmlDeviceGetEnforcedPowerLimit(self, h: _Handle) -> int:
        return int(self._gpu(h).power_limit_mw)

    def nvmlDeviceGetClockInfo(self, h: _Handle, kind: int) -> int:
        g = self._gpu(h)
        return int(g.read("sm_clock" if kind == pynvml.NVML_CLOCK_SM else "mem_clock"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: _Handle) -> int:
        return int(self._gpu(h).read("throttle"))

    def nvmlDeviceGetTotalEccErrors(self, h: _Handle, error_type: int, counter: int) -> int:
        return int(self._gpu(h).read("ecc_uncorrected"))

    def nvmlDeviceGetRemappedRows(self, h: _Handle) -> tuple[int, int, int, int]:
        g = self._gpu(h)
        return (0, 0, int(g.read("remap_pending")), int(g.read("remap_failed")))

    def nvmlDeviceGetPcieThroughput(self, h: _Handle, counter: int) -> int:
        return int(self._gpu(h).read("pcie_kbps"))

    def nvmlDeviceGetNvLinkState(self, h: _Handle, lane: int) -> int:
        g = self._gpu(h)
        if g.nvlinks == 0:
            raise _error("NVMLError_NotSupported")
        if lane >= g.nvlinks:
            raise _error("NVMLError_InvalidArgument")
        # Start-up probing sees every lane up; nvlink_down applies from the first collection.
        return 0 if lane in g.nvlink_down and g._reads.get("util") else 1

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: _Handle, lane: int) -> SimpleNamespace:
        self._gpu(h)
        return SimpleNamespace(busId=b"00000000:C0:00.0")  # an NVSwitch

    def nvmlDeviceGetFieldValues(self, h: _Handle, fields: list[tuple[int, int]]) -> list[Any]:
        g = self._gpu(h)
        n = g._reads.get("nvlink_fields", 0) + 1
        g._reads["nvlink_fields"] = n
        kib = int(n * g.nvlink_kib_per_read)
        return [
            SimpleNamespace(fieldId=f, scopeId=s, nvmlReturn=0, value=SimpleNamespace(ullVal=kib))
            for f, s in fields
        ]

    def nvmlDeviceGetMigMode(self, h: _Handle) -> list[int]:
        g = self._gpu(h)
        return [1, 1] if g.mig else [0, 0]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: _Handle) -> int:
        return 7 if self._gpu(h).mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: _Handle, k: int) -> _Handle:
        if k >= self._gpu(h).mig_instances:
            raise _error("NVMLError_NotFound")
        return _Handle(h.gpu, k)

    def nvmlDeviceGetP2PStatus(self, a: _Handle, b: _Handle, index: int) -> int:
        self._gpu(a)
        self._gpu(b)
        both = self.gpus[a.gpu].nvlinks and self.gpus[b.gpu].nvlinks
        return pynvml.NVML_P2P_STATUS_OK if both else 4  # 4: not supported

    def nvmlDeviceGetTopologyCommonAncestor(self, a: _Handle, b: _Handle) -> int:
        same_half = (a.gpu < len(self.gpus) // 2) == (b.gpu < len(self.gpus) // 2)
        return pynvml.NVML_TOPOLOGY_NODE if same_half else pynvml.NVML_TOPOLOGY_SYSTEM

    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlEventSetFree(self, event_set: object) -> None:
        pass

    def nvmlDeviceRegisterEvents(self, h: _Handle, types: int, event_set: object) -> None:
        self._gpu(h)
        with self._cond:
            self._registered.add(h.gpu)

    def nvmlEventSetWait(self, event_set: object, timeout_ms: int) -> SimpleNamespace:
        with self._cond:
            if not self._events:
                self._cond.wait(timeout_ms / 1000)
            if not self._events:
                raise _error("NVMLError_Timeout")
            return self._events.popleft()


def fake_nvml_collector(
    gpus: int = 8,
    *,
    xid: Sequence[tuple[int, int, int]] = (),
    dead: Sequence[tuple[int, int]] = (),
    driver: bool = True,
    event_wait_ms: int = 100,
) -> Collector:
    """The NVML collector over a :class:`FakeNvml` (registry name ``fake_nvml``)."""
    from infermesh.signal.nvml import NvmlCollector

    collector = NvmlCollector(
        FakeNvml(gpus, xid=xid, dead=dead, driver=driver), event_wait_ms=event_wait_ms
    )
    collector.name = "fake_nvml"
    return collector


# -- DCGM ---------------------------------------------------------------------------------


@dataclass
class FakeDcgmGpu:
    """One GPU as dcgm-exporter would report it; fields are scripts as in :class:`FakeGpu`."""

    index: int
    model: str = "NVIDIA H100 80GB HBM3"
    util: Script = 50.0
    fb_used_mib: Script = 10240.0
    fb_free_mib: Script = 71000.0
    temp: Script = 55.0
    power_w: Script = 300.0
    sm_active: Script = 0.6
    tensor_active: Script = 0.3
    dram_active: Script = 0.4
    xid: Script = 0.0
    nvlink_bytes: Script = 0.0
    pcie_tx_bytes: Script = 0.0
    pcie_rx_bytes: Script = 0.0
    _reads: dict[str, int] = field(default_factory=dict)

    def read(self, what: str) -> float:
        return _replay(self, what)


_DCGM_FIELDS = [
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "util", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "fb_used_mib", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "fb_free_mib", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "temp", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "power_w", "Power draw (in W)."),
    ("DCGM_FI_PROF_SM_ACTIVE", "gauge", "sm_active", "Ratio of cycles an SM has a warp."),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "tensor_active", "Tensor pipe activity."),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "dram_active", "Memory interface activity."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "xid", "Value of the last XID error encountered."),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter", "nvlink_bytes", "NVLink bandwidth."),
    ("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge", "pcie_tx_bytes", "PCIe tx bytes per second."),
    ("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge", "pcie_rx_bytes", "PCIe rx bytes per second."),
]


class FakeDcgm:
    """Renders dcgm-exporter's ``/metrics`` text for scripted GPUs (one read per render)."""

    def __init__(self, gpus: int | Sequence[FakeDcgmGpu] = 8, hostname: str = "fake") -> None:
        self.gpus = [FakeDcgmGpu(i) for i in range(gpus)] if isinstance(gpus, int) else list(gpus)
        self.hostname = hostname
        self.dead: set[int] = set()

    def render(self) -> str:
        lines = []
        for metric, kind, attr, doc in _DCGM_FIELDS:
            lines.append(f"# HELP {metric} {doc}")
            lines.append(f"# TYPE {metric} {kind}")
            for g in self.gpus:
                if g.index in self.dead:
                    continue  # dcgm-exporter drops a GPU it cannot read
                labels = (
                    f'gpu="{g.index}",UUID="GPU-fake-{g.index:04d}",device="nvidia{g.index}",'
                    f'modelName="{g.model}",Hostname="{self.hostname}"'
                )
                lines.append(f"{metric}{{{labels}}} {g.read(attr):g}")
        return "\n".join(lines) + "\n"

    def __call__(self) -> str:
        return self.render()


def fake_dcgm_collector(gpus: int = 8) -> Collector:
    """The dcgm-exporter collector reading a :class:`FakeDcgm` (registry name ``fake_dcgm``)."""
    from infermesh.signal.dcgm import DcgmCollector

    collector = DcgmCollector(source=FakeDcgm(gpus))
    collector.name = "fake_dcgm"
    return collector
