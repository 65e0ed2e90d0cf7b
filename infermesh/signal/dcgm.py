"""dcgm-exporter collector: scrape its Prometheus text and map DCGM field names to ours.

dcgm-exporter (https://github.com/NVIDIA/dcgm-exporter) publishes one gauge or counter per
DCGM field, named ``DCGM_FI_DEV_*`` (device counters) or ``DCGM_FI_PROF_*`` (profiling
metrics), with labels ``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname`` and, for
MIG instances, ``GPU_I_ID``. It has no timestamps: samples are stamped with the scrape time.

``DCGM_FI_DEV_XID_ERRORS`` holds the *last* XID seen, so a ``gpu.xid`` event is emitted when
that value changes to a non-zero code (at the first scrape a non-zero value is reported once:
we cannot tell how old it is).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from infermesh.signal._promtext import check_url, fetch, flatten
from infermesh.signal.api import Collector, CollectorError, Sample

logger = logging.getLogger(__name__)

__all__ = ["DCGM_MAP", "DcgmCollector"]

_MIB = 1024.0 * 1024.0

DCGM_MAP: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("gpu.util", 0.01),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("gpu.mem_util", 0.01),
    "DCGM_FI_DEV_FB_USED": ("gpu.mem_used_bytes", _MIB),
    "DCGM_FI_DEV_GPU_TEMP": ("gpu.temp_c", 1.0),
    "DCGM_FI_DEV_POWER_USAGE": ("gpu.power_w", 1.0),
    "DCGM_FI_DEV_SM_CLOCK": ("gpu.sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_MEM_CLOCK": ("gpu.mem_clock_mhz", 1.0),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": ("gpu.throttle_reasons", 1.0),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("gpu.ecc_uncorrected", 1.0),
    "DCGM_FI_DEV_ROW_REMAP_PENDING": ("gpu.remapped_rows_pending", 1.0),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("gpu.remap_failed", 1.0),
    "DCGM_FI_PROF_SM_ACTIVE": ("gpu.sm_active", 1.0),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("gpu.tensor_active", 1.0),
    "DCGM_FI_PROF_DRAM_ACTIVE": ("gpu.dram_active", 1.0),
    "DCGM_FI_PROF_PCIE_TX_BYTES": ("gpu.pcie_tx_bytes_per_s", 1.0),
    "DCGM_FI_PROF_PCIE_RX_BYTES": ("gpu.pcie_rx_bytes_per_s", 1.0),
    "DCGM_FI_PROF_NVLINK_TX_BYTES": ("gpu.nvlink_tx_bytes_per_s", 1.0),
    "DCGM_FI_PROF_NVLINK_RX_BYTES": ("gpu.nvlink_rx_bytes_per_s", 1.0),
}
"""DCGM field -> (our signal name, scale to our unit). FB_FREE, FB_RESERVED and XID_ERRORS
are handled apart (memory total, events)."""


class DcgmCollector(Collector):
    """Scrapes dcgm-exporter (default port 9400).

    :param url: e.g. ``http://127.0.0.1:9400/metrics`` (``/metrics`` added if missing).
    :param source: instead of a URL, a function returning the exposition text (fakes).
    """

    name = "dcgm"

    def __init__(
        self,
        url: str | None = None,
        *,
        source: Callable[[], str] | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        if (url is None) == (source is None):
            raise CollectorError(
                "dcgm collector needs exactly one of url (dcgm-exporter's address, "
                "e.g. http://127.0.0.1:9400/metrics) or source"
            )
        self.url = check_url(url, "dcgm") if url is not None else None
        self._source = source
        self._timeout = timeout_s
        self._last_xid: dict[str, float] = {}
        self._failing = False

    def _text(self) -> str:
        if self._source is not None:
            return self._source()
        assert self.url is not None
        return fetch(self.url, self._timeout)

    def collect(self, now: float) -> list[Sample]:
        try:
            text = self._text()
        except OSError as exc:
            if not self._failing:
                logger.warning(
                    "dcgm: scraping %s failed: %s (reported as dcgm.up=0)", self.url, exc
                )
            self._failing = True
            return [Sample("dcgm.up", 0.0, now)]
        if self._failing:
            logger.info("dcgm: %s answers again", self.url)
        self._failing = False
        out = [Sample("dcgm.up", 1.0, now)]
        used: dict[str, float] = {}
        free: dict[str, float] = {}
        for metric, labels, value in flatten(text):
            gpu = labels.get("gpu")
            if gpu is None:
                continue
            lab = f"gpu={gpu}"
            if labels.get("GPU_I_ID"):
                lab = f"gpu={gpu},mig={labels['GPU_I_ID']}"
            mapped = DCGM_MAP.get(metric)
            if mapped is not None:
                name, scale = mapped
                out.append(Sample(name, value * scale, now, lab))
                if metric == "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS":
                    thermal = 1.0 if int(value) & 0x60 else 0.0
                    out.append(Sample("gpu.thermal_throttle", thermal, now, lab))
                if metric == "DCGM_FI_DEV_FB_USED":
                    used[lab] = value
            elif metric in ("DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED"):
                free[lab] = free.get(lab, 0.0) + value
            elif metric == "DCGM_FI_DEV_XID_ERRORS":
                last = self._last_xid.get(lab, 0.0)
                self._last_xid[lab] = value
                if value and value != last:
                    out.append(Sample("gpu.xid", value, now, lab))
        for lab, u in used.items():
            if lab in free:
                out.append(Sample("gpu.mem_total_bytes", (u + free[lab]) * _MIB, now, lab))
        return out
