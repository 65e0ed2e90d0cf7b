"""Host collector (psutil): CPU, memory, load and network interface counters."""

from __future__ import annotations

import os
import re
import time

import psutil

from infermesh.core.errors import UsageError
from infermesh.signal.api import Collector, NodeInventory, Sample

__all__ = ["HostCollector"]


class HostCollector(Collector):
    """CPU busy percent since the previous read, memory, load and per-interface counters.

    :param ifaces: regular expression of interface names to report (default: all but ``lo``).
    """

    name = "host"

    def __init__(self, *, ifaces: str = r"^(?!lo$).+") -> None:
        try:
            self._ifaces = re.compile(ifaces)
        except re.error as exc:
            raise UsageError(
                f"host collector: ifaces {ifaces!r} is not a regular expression ({exc}); "
                "pass e.g. '^(eth|ib)'"
            ) from exc
        self._cpu = self._cpu_times()
        self._cpu_at = time.monotonic()
        self._labels: dict[str, str] = {}

    @staticmethod
    def _cpu_times() -> tuple[float, float]:
        """(total, idle) CPU seconds of all cores since boot."""
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t), idle

    def _cpu_percent(self) -> float | None:
        """Busy percent since the previous read; None if that was under 0.1 s ago (the
        kernel's tick counters cannot measure so short an interval)."""
        if time.monotonic() - self._cpu_at < 0.1:
            return None
        total, idle = self._cpu_times()
        d_total, d_idle = total - self._cpu[0], idle - self._cpu[1]
        self._cpu, self._cpu_at = (total, idle), time.monotonic()
        if d_total <= 0:
            return 0.0
        # the counters are sums of floats: an idle interval can come out a hair below zero
        return min(100.0, max(0.0, 100.0 * (d_total - d_idle) / d_total))

    def inventory(self) -> NodeInventory:
        nics = sorted(n for n in psutil.net_if_addrs() if self._ifaces.search(n))
        return NodeInventory(
            source=self.name,
            no_gpu="the host collector does not read GPUs",
            details={
                "cpus": str(psutil.cpu_count() or 0),
                "memory_bytes": str(psutil.virtual_memory().total),
                "ifaces": ",".join(nics),
            },
        )

    def _iface_label(self, name: str) -> str | None:
        lab = self._labels.get(name)
        if lab is None:
            if not self._ifaces.search(name) or "," in name or "=" in name:
                return None
            lab = self._labels[name] = f"iface={name}"
        return lab

    def collect(self, now: float) -> list[Sample]:
        mem = psutil.virtual_memory()
        out = [
            Sample("host.cpu_count", float(psutil.cpu_count() or 0), now),
            Sample("host.load1", float(os.getloadavg()[0]), now),
            Sample("host.mem_used_bytes", float(mem.total - mem.available), now),
            Sample("host.mem_total_bytes", float(mem.total), now),
        ]
        cpu = self._cpu_percent()
        if cpu is not None:
            out.append(Sample("host.cpu_percent", cpu, now))
        for name, c in psutil.net_io_counters(pernic=True).items():
            lab = self._iface_label(name)
            if lab is None:
                continue
            out.append(Sample("net.rx_bytes", float(c.bytes_recv), now, lab))
            out.append(Sample("net.tx_bytes", float(c.bytes_sent), now, lab))
            out.append(Sample("net.rx_errors", float(c.errin), now, lab))
            out.append(Sample("net.tx_errors", float(c.errout), now, lab))
        return out
