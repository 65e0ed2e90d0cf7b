"""NVML collector: per-GPU telemetry, XID events, NVLink, PCIe, MIG and the topology matrix.

Reads the driver through ``pynvml`` (the ``nvidia-ml-py`` package), or through any object
with the same functions and constants (:class:`~infermesh.signal.fakes.FakeNvml` in tests).

Behaviour at the edges:

- **No driver / no library**: ``nvmlInit`` fails once; the inventory says "no GPU" with the
  reason, :meth:`NvmlCollector.collect` returns nothing, and the reason is logged once.
- **A query the GPU does not support** (``NotSupported``, ``NoPermission``, a function the
  driver lacks): skipped from then on for that GPU, logged once at debug level.
- **A lost GPU** (``GpuIsLost``, XID 79's NVML face): reported as ``gpu.lost = 1`` on every
  collection and never queried again; the other GPUs keep reporting.
- **XID events** arrive through an NVML event set waited on in a daemon thread; each becomes
  one ``gpu.xid`` sample, stamped with the time the wait returned.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import deque
from typing import Any

from infermesh.signal.api import Collector, GpuInfo, NodeInventory, Sample

logger = logging.getLogger(__name__)

__all__ = ["NvmlCollector"]

_UNSUPPORTED = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")
_LEVELS = {0: "PIX", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
_THERMAL_BITS = 0x20 | 0x40  # software and hardware thermal slowdown


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class _Lost(Exception):
    """Internal: the GPU answered GpuIsLost."""


class NvmlCollector(Collector):
    """Every GPU NVML sees on this machine.

    :param nvml: the NVML module (default: ``pynvml``); tests pass a FakeNvml.
    :param xid_events: watch XID critical errors in a thread.
    :param event_wait_ms: how long one event-set wait blocks (bounds :meth:`close`).
    """

    name = "nvml"

    def __init__(
        self, nvml: Any | None = None, *, xid_events: bool = True, event_wait_ms: int = 500
    ) -> None:
        self._nvml = nvml if nvml is not None else importlib.import_module("pynvml")
        self._wait_ms = event_wait_ms
        self._handles: list[Any] = []
        self._labels: list[str] = []
        self._lanes: list[list[int]] = []
        self._lost: set[int] = set()
        self._skip: set[tuple[int, str]] = set()
        self._warned: set[tuple[int, str, str]] = set()
        self._events: deque[tuple[float, int, int]] = deque(maxlen=10_000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._closed = False
        self._started = False
        try:
            self._nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, OSError...
            self._inventory = NodeInventory(source=self.name, no_gpu=self._no_gpu_reason(exc))
            logger.info("nvml: no GPU: %s", self._inventory.no_gpu)
            return
        self._started = True
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            self._inventory = NodeInventory(
                source=self.name, no_gpu=f"NVML loaded but listing GPUs failed: {exc}"
            )
            logger.warning("nvml: %s", self._inventory.no_gpu)
            self._handles = []
            return
        self._labels = [f"gpu={i}" for i in range(len(self._handles))]
        self._lanes = [self._probe_lanes(i) for i in range(len(self._handles))]
        self._inventory = self._build_inventory()
        if not self._handles:
            logger.info("nvml: no GPU: %s", self._inventory.no_gpu)
        elif xid_events:
            self._start_events()

    # -- setup ------------------------------------------------------------------------------

    def _no_gpu_reason(self, exc: Exception) -> str:
        kind = type(exc).__name__
        if kind == "NVMLError_LibraryNotFound" or isinstance(exc, OSError):
            return (
                "NVML library not found (libnvidia-ml.so.1): no NVIDIA driver on this "
                "machine; install the driver to report GPUs"
            )
        if kind == "NVMLError_DriverNotLoaded":
            return "NVIDIA driver not loaded (nvidia kernel module missing); load it to report GPUs"
        return f"NVML failed to start: {kind}: {exc}"

    def _err(self, exc: BaseException, *names: str) -> bool:
        return type(exc).__name__ in names

    def _call(self, i: int, what: str, fn: str, *args: Any) -> Any:
        """``nvml.<fn>(*args)`` for GPU ``i``; None if unsupported or failed (logged once)."""
        if (i, what) in self._skip:
            return None
        try:
            return getattr(self._nvml, fn)(*args)
        except Exception as exc:
            if self._err(exc, "NVMLError_GpuIsLost"):
                raise _Lost from exc
            if self._err(exc, *_UNSUPPORTED) or isinstance(exc, AttributeError):
                self._skip.add((i, what))
                logger.debug("nvml: GPU %d: %s not available (%s)", i, what, exc)
                return None
            key = (i, what, type(exc).__name__)
            if key not in self._warned:
                self._warned.add(key)
                logger.warning("nvml: GPU %d: reading %s failed: %s", i, what, exc)
            return None

    def _probe_lanes(self, i: int) -> list[int]:
        lanes: list[int] = []
        for lane in range(int(getattr(self._nvml, "NVML_NVLINK_MAX_LINKS", 18))):
            try:
                state = self._nvml.nvmlDeviceGetNvLinkState(self._handles[i], lane)
            except Exception:
                break  # NotSupported (no NVLink) or InvalidArgument (past the last lane)
            if state:
                lanes.append(lane)
        return lanes

    def _build_inventory(self) -> NodeInventory:
        nv = self._nvml
        gpus = []
        for i, h in enumerate(self._handles):
            try:
                mem = self._call(i, "memory", "nvmlDeviceGetMemoryInfo", h)
                mig = self._call(i, "mig", "nvmlDeviceGetMigMode", h)
                pci = self._call(i, "pci", "nvmlDeviceGetPciInfo", h)
                gpus.append(
                    GpuInfo(
                        index=i,
                        uuid=_text(self._call(i, "uuid", "nvmlDeviceGetUUID", h) or ""),
                        name=_text(self._call(i, "name", "nvmlDeviceGetName", h) or ""),
                        memory_total_bytes=int(mem.total) if mem is not None else 0,
                        mig_enabled=bool(mig and mig[0] == nv.NVML_DEVICE_MIG_ENABLE),
                        mig_instances=tuple(self._mig_uuids(i)) if mig and mig[0] else (),
                        pci_bus_id=_text(pci.busId) if pci is not None else "",
                        nvlinks=len(self._lanes[i]),
                    )
                )
            except _Lost:
                self._lost.add(i)
                gpus.append(GpuInfo(index=i, uuid="", name="(lost)", memory_total_bytes=0))
        driver = cuda = ""
        try:
            driver = _text(nv.nvmlSystemGetDriverVersion())
            v = int(nv.nvmlSystemGetCudaDriverVersion())
            cuda = f"{v // 1000}.{v % 1000 // 10}"
        except Exception:
            pass
        return NodeInventory(
            source=self.name,
            gpus=tuple(gpus),
            no_gpu=None if gpus else "NVML found no GPU on this machine",
            driver_version=driver,
            cuda_version=cuda,
            topology=self._topology(gpus),
        )

    def _mig_uuids(self, i: int) -> list[str]:
        h = self._handles[i]
        out = []
        count = self._call(i, "mig_count", "nvmlDeviceGetMaxMigDeviceCount", h) or 0
        for k in range(int(count)):
            try:
                mh = self._nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
                out.append(_text(self._nvml.nvmlDeviceGetUUID(mh)))
            except Exception:
                continue  # NotFound: an empty MIG slot
        return out

    def _topology(self, gpus: list[GpuInfo]) -> tuple[tuple[str, ...], ...]:
        """The ``nvidia-smi topo -m`` matrix: NV<lanes> where P2P over NVLink works."""
        nv = self._nvml
        n = len(self._handles)
        by_bus = {g.pci_bus_id.lower(): g.index for g in gpus if g.pci_bus_id}
        rows = []
        for i in range(n):
            row = []
            for j in range(n):
                if i == j:
                    row.append("X")
                    continue
                if i in self._lost or j in self._lost:
                    row.append("?")
                    continue
                hi, hj = self._handles[i], self._handles[j]
                cell = "?"
                try:
                    status = nv.nvmlDeviceGetP2PStatus(hi, hj, nv.NVML_P2P_CAPS_INDEX_NVLINK)
                    if status == nv.NVML_P2P_STATUS_OK:
                        direct = 0
                        for lane in self._lanes[i]:
                            remote = nv.nvmlDeviceGetNvLinkRemotePciInfo(hi, lane)
                            if by_bus.get(_text(remote.busId).lower()) == j:
                                direct += 1
                        # Through NVSwitch every lane reaches every peer.
                        cell = f"NV{direct or len(self._lanes[i])}"
                except Exception:
                    pass
                if cell == "?":
                    try:
                        level = int(nv.nvmlDeviceGetTopologyCommonAncestor(hi, hj))
                        cell = _LEVELS.get(level, "SYS")
                    except Exception:
                        pass
                row.append(cell)
            rows.append(tuple(row))
        return tuple(rows)

    def _start_events(self) -> None:
        nv = self._nvml
        try:
            self._event_set = nv.nvmlEventSetCreate()
        except Exception as exc:
            logger.info("nvml: XID events unavailable: %s", exc)
            return
        watched = 0
        for i, h in enumerate(self._handles):
            try:
                nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, self._event_set)
                watched += 1
            except Exception as exc:
                logger.info("nvml: GPU %d: XID events unavailable: %s", i, exc)
        if watched:
            self._thread = threading.Thread(
                target=self._watch_events, name="infermesh-nvml-xid", daemon=True
            )
            self._thread.start()

    def _watch_events(self) -> None:
        nv = self._nvml
        while not self._stop.is_set():
            try:
                data = nv.nvmlEventSetWait(self._event_set, self._wait_ms)
            except Exception as exc:
                if not self._err(exc, "NVMLError_Timeout"):
                    logger.warning("nvml: waiting for XID events failed: %s", exc)
                    self._stop.wait(1.0)
                continue
            try:
                index = int(nv.nvmlDeviceGetIndex(data.device))
            except Exception:
                index = -1
            self._events.append((time.time(), index, int(data.eventData)))
            logger.warning("nvml: GPU %d: XID %d", index, int(data.eventData))

    # -- Collector ------------------------------------------------------------------------

    def inventory(self) -> NodeInventory:
        return self._inventory

    def collect(self, now: float) -> list[Sample]:
        out: list[Sample] = []
        while self._events:
            ts, index, xid = self._events.popleft()
            out.append(Sample("gpu.xid", float(xid), ts, f"gpu={index}" if index >= 0 else ""))
        for i in range(len(self._handles)):
            if i not in self._lost:
                try:
                    self._collect_gpu(i, now, out)
                    continue
                except _Lost:
                    self._lost.add(i)
                    logger.error("nvml: GPU %d is lost (fell off the bus); not read again", i)
            out.append(Sample("gpu.lost", 1.0, now, self._labels[i]))
        return out

    def _collect_gpu(self, i: int, now: float, out: list[Sample]) -> None:
        nv, h, lab = self._nvml, self._handles[i], self._labels[i]
        add = out.append
        util = self._call(i, "util", "nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            add(Sample("gpu.util", util.gpu / 100.0, now, lab))
            add(Sample("gpu.mem_util", util.memory / 100.0, now, lab))
        mem = self._call(i, "memory", "nvmlDeviceGetMemoryInfo", h)
        if mem is not None:
            add(Sample("gpu.mem_used_bytes", float(mem.used), now, lab))
            add(Sample("gpu.mem_total_bytes", float(mem.total), now, lab))
        temp = self._call(i, "temp", "nvmlDeviceGetTemperature", h, nv.NVML_TEMPERATURE_GPU)
        if temp is not None:
            add(Sample("gpu.temp_c", float(temp), now, lab))
        power = self._call(i, "power", "nvmlDeviceGetPowerUsage", h)
        if power is not None:
            add(Sample("gpu.power_w", power / 1000.0, now, lab))
        limit = self._call(i, "power_limit", "nvmlDeviceGetEnforcedPowerLimit", h)
        if limit is not None:
            add(Sample("gpu.power_limit_w", limit / 1000.0, now, lab))
        sm = self._call(i, "sm_clock", "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_SM)
        if sm is not None:
            add(Sample("gpu.sm_clock_mhz", float(sm), now, lab))
        memclk = self._call(i, "mem_clock", "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_MEM)
        if memclk is not None:
            add(Sample("gpu.mem_clock_mhz", float(memclk), now, lab))
        reasons = self._call(i, "events", "nvmlDeviceGetCurrentClocksEventReasons", h)
        if reasons is None:
            reasons = self._call(i, "throttle", "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        if reasons is not None:
            add(Sample("gpu.throttle_reasons", float(reasons), now, lab))
            add(Sample("gpu.thermal_throttle", 1.0 if reasons & _THERMAL_BITS else 0.0, now, lab))
        ecc = self._call(
            i,
            "ecc",
            "nvmlDeviceGetTotalEccErrors",
            h,
            nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nv.NVML_VOLATILE_ECC,
        )
        if ecc is not None:
            add(Sample("gpu.ecc_uncorrected", float(ecc), now, lab))
        rows = self._call(i, "remap", "nvmlDeviceGetRemappedRows", h)
        if rows is not None:
            add(Sample("gpu.remapped_rows_pending", 1.0 if rows[2] else 0.0, now, lab))
            add(Sample("gpu.remap_failed", 1.0 if rows[3] else 0.0, now, lab))
        tx = self._call(i, "pcie", "nvmlDeviceGetPcieThroughput", h, nv.NVML_PCIE_UTIL_TX_BYTES)
        if tx is not None:
            add(Sample("gpu.pcie_tx_bytes_per_s", tx * 1024.0, now, lab))
            rx = self._call(i, "pcie", "nvmlDeviceGetPcieThroughput", h, nv.NVML_PCIE_UTIL_RX_BYTES)
            if rx is not None:
                add(Sample("gpu.pcie_rx_bytes_per_s", rx * 1024.0, now, lab))
        lanes = self._lanes[i]
        if lanes:
            for lane in lanes:
                state = self._call(i, f"nvlink{lane}", "nvmlDeviceGetNvLinkState", h, lane)
                if state is not None:
                    add(Sample("gpu.nvlink_up", 1.0 if state else 0.0, now, f"{lab},nvlink={lane}"))
            self._nvlink_bytes(i, now, out)
        mig = self._call(i, "mig", "nvmlDeviceGetMigMode", h)
        if mig is not None:
            enabled = mig[0] == nv.NVML_DEVICE_MIG_ENABLE
            add(Sample("gpu.mig_enabled", 1.0 if enabled else 0.0, now, lab))
            if enabled:
                add(Sample("gpu.mig_instances", float(len(self._mig_uuids(i))), now, lab))

    def _nvlink_bytes(self, i: int, now: float, out: list[Sample]) -> None:
        nv = self._nvml
        tx_id, rx_id = (
            nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
            nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
        )
        fields = [(f, lane) for lane in self._lanes[i] for f in (tx_id, rx_id)]
        values = self._call(i, "nvlink_bytes", "nvmlDeviceGetFieldValues", self._handles[i], fields)
        if values is None:
            return
        tx = rx = 0
        ok = False
        for v in values:
            if v.nvmlReturn != 0:
                continue
            ok = True
            if v.fieldId == tx_id:
                tx += int(v.value.ullVal)
            else:
                rx += int(v.value.ullVal)
        if ok:
            lab = self._labels[i]
            out.append(Sample("gpu.nvlink_tx_bytes", tx * 1024.0, now, lab))
            out.append(Sample("gpu.nvlink_rx_bytes", rx * 1024.0, now, lab))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(2.0, 2 * self._wait_ms / 1000))
        if self._event_set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._event_set)
            except Exception:
                pass
        if self._started:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
