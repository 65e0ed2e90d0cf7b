"""The signal vocabulary: every sample name a collector emits, its kind, unit and meaning.

``kind`` is ``gauge`` (a level), ``counter`` (monotonic; fusion derives a per-second rate)
or ``event`` (one sample per occurrence, e.g. an XID; fusion keeps them for health).
docs/SIGNALS.md lists the same table; a test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COUNTER", "EVENT", "GAUGE", "SIGNALS", "SignalSpec", "is_known", "kind_of"]

GAUGE, COUNTER, EVENT = "gauge", "counter", "event"


@dataclass(frozen=True, slots=True)
class SignalSpec:
    name: str
    kind: str
    unit: str
    labels: str
    doc: str


def _spec(name: str, kind: str, unit: str, labels: str, doc: str) -> SignalSpec:
    return SignalSpec(name, kind, unit, labels, doc)


_TABLE = [
    # -- GPU (nvml, dcgm, fakes) --------------------------------------------------------------
    _spec("gpu.util", GAUGE, "ratio", "gpu", "Fraction of time a kernel ran (NVML utilization)."),
    _spec("gpu.mem_util", GAUGE, "ratio", "gpu", "Fraction of time memory was read or written."),
    _spec("gpu.mem_used_bytes", GAUGE, "bytes", "gpu", "Frame buffer memory in use."),
    _spec("gpu.mem_total_bytes", GAUGE, "bytes", "gpu", "Frame buffer memory size."),
    _spec("gpu.temp_c", GAUGE, "celsius", "gpu", "GPU core temperature."),
    _spec("gpu.power_w", GAUGE, "watts", "gpu", "Board power draw."),
    _spec("gpu.power_limit_w", GAUGE, "watts", "gpu", "Enforced power limit."),
    _spec("gpu.sm_clock_mhz", GAUGE, "MHz", "gpu", "SM clock."),
    _spec("gpu.mem_clock_mhz", GAUGE, "MHz", "gpu", "Memory clock."),
    _spec(
        "gpu.throttle_reasons",
        GAUGE,
        "bitmask",
        "gpu",
        "NVML clock event (throttle) reason bits; 0x20/0x40 are software/hardware thermal.",
    ),
    _spec("gpu.thermal_throttle", GAUGE, "0/1", "gpu", "1 while a thermal slowdown is active."),
    _spec(
        "gpu.ecc_uncorrected",
        COUNTER,
        "errors",
        "gpu",
        "Volatile uncorrected ECC errors since the driver loaded.",
    ),
    _spec("gpu.remapped_rows_pending", GAUGE, "0/1", "gpu", "1 if a row remap awaits a reset."),
    _spec("gpu.remap_failed", GAUGE, "0/1", "gpu", "1 if a row remap failed (replace the GPU)."),
    _spec("gpu.xid", EVENT, "code", "gpu", "An XID error; the value is the XID code."),
    _spec("gpu.lost", GAUGE, "0/1", "gpu", "1 when NVML reports the GPU is lost (off the bus)."),
    _spec("gpu.pcie_tx_bytes_per_s", GAUGE, "bytes/s", "gpu", "PCIe transmit throughput."),
    _spec("gpu.pcie_rx_bytes_per_s", GAUGE, "bytes/s", "gpu", "PCIe receive throughput."),
    _spec("gpu.nvlink_up", GAUGE, "0/1", "gpu,nvlink", "State of one NVLink lane."),
    _spec("gpu.nvlink_tx_bytes", COUNTER, "bytes", "gpu", "NVLink data transmitted (all lanes)."),
    _spec("gpu.nvlink_rx_bytes", COUNTER, "bytes", "gpu", "NVLink data received (all lanes)."),
    _spec("gpu.mig_enabled", GAUGE, "0/1", "gpu", "1 if MIG mode is on."),
    _spec("gpu.mig_instances", GAUGE, "count", "gpu", "MIG devices present on the GPU."),
    _spec("gpu.sm_active", GAUGE, "ratio", "gpu", "DCGM: fraction of cycles an SM had a warp."),
    _spec("gpu.tensor_active", GAUGE, "ratio", "gpu", "DCGM: tensor core pipe activity."),
    _spec("gpu.dram_active", GAUGE, "ratio", "gpu", "DCGM: memory interface activity."),
    _spec("gpu.nvlink_tx_bytes_per_s", GAUGE, "bytes/s", "gpu", "DCGM: NVLink transmit rate."),
    _spec("gpu.nvlink_rx_bytes_per_s", GAUGE, "bytes/s", "gpu", "DCGM: NVLink receive rate."),
    _spec("dcgm.up", GAUGE, "0/1", "", "1 if the last dcgm-exporter scrape succeeded."),
    # -- host -----------------------------------------------------------------------------
    _spec("host.cpu_percent", GAUGE, "percent", "", "CPU busy over all cores since last read."),
    _spec("host.cpu_count", GAUGE, "count", "", "Logical CPUs."),
    _spec("host.load1", GAUGE, "load", "", "1-minute load average."),
    _spec("host.mem_used_bytes", GAUGE, "bytes", "", "Memory in use (total - available)."),
    _spec("host.mem_total_bytes", GAUGE, "bytes", "", "Physical memory."),
    _spec("net.rx_bytes", COUNTER, "bytes", "iface", "Bytes received on an interface."),
    _spec("net.tx_bytes", COUNTER, "bytes", "iface", "Bytes sent on an interface."),
    _spec("net.rx_errors", COUNTER, "errors", "iface", "Receive errors on an interface."),
    _spec("net.tx_errors", COUNTER, "errors", "iface", "Transmit errors on an interface."),
    # -- model-server runtimes ------------------------------------------------------------
    _spec("runtime.requests_running", GAUGE, "requests", "model", "Requests being decoded."),
    _spec("runtime.requests_waiting", GAUGE, "requests", "model", "Requests queued."),
    _spec("runtime.kv_cache_usage", GAUGE, "ratio", "model", "KV-cache fraction in use."),
    _spec("runtime.prefix_cache_hits", COUNTER, "tokens", "model", "Prefix-cache hits (tokens)."),
    _spec(
        "runtime.prefix_cache_queries",
        COUNTER,
        "tokens",
        "model",
        "Prefix-cache lookups (tokens); hits / queries is the hit rate.",
    ),
    _spec("runtime.requests_total", COUNTER, "requests", "model", "Requests finished."),
    _spec(
        "runtime.ttft_p50_s",
        GAUGE,
        "seconds",
        "model",
        "Median time to first token over the last scrape interval (from histogram buckets).",
    ),
    _spec(
        "runtime.ttft_p95_s",
        GAUGE,
        "seconds",
        "model",
        "95th-percentile time to first token over the last scrape interval.",
    ),
    _spec(
        "runtime.queue_mean_s",
        GAUGE,
        "seconds",
        "model",
        "Mean queue time of the requests of the last scrape interval (TGI, Triton).",
    ),
    _spec(
        "runtime.prefix_cache_hit_rate",
        GAUGE,
        "ratio",
        "model",
        "Prefix-cache hit rate as the runtime reports it (SGLang).",
    ),
    _spec("runtime.up", GAUGE, "0/1", "", "1 if the last scrape of the runtime succeeded."),
    # -- collectives (MeshHook -> zmq -> agent) --------------------------------------------
    _spec(
        "comm.allreduce_bytes",
        COUNTER,
        "bytes",
        "job,rank,link,strategy",
        "Bytes sent into gradient collectives (after compression).",
    ),
    _spec(
        "comm.allreduce_seconds",
        COUNTER,
        "seconds",
        "job,rank,link,strategy",
        "Time spent in gradient collectives.",
    ),
    _spec(
        "comm.allreduce_count",
        COUNTER,
        "collectives",
        "job,rank,link,strategy",
        "Gradient collectives run.",
    ),
    _spec(
        "comm.link_bandwidth_bytes_per_s",
        GAUGE,
        "bytes/s",
        "link",
        "Effective bandwidth of a link class over the last interval: bytes / seconds of "
        "the collectives that ran on it (algorithm bandwidth, not bus bandwidth).",
    ),
    _spec("comm.dropped", COUNTER, "messages", "", "Collective messages the agent dropped."),
    _spec(
        "comm.grad_bytes",
        GAUGE,
        "bytes",
        "job,backend",
        "Gradient bytes a training job all-reduces per step, and its process-group backend "
        "(the MeshHook's model; the coordinator plans the job's collectives with it).",
    ),
    _spec("comm.bucket_bytes", GAUGE, "bytes", "job", "DDP bucket size of a training job."),
    _spec(
        "comm.link_latency_s",
        GAUGE,
        "seconds",
        "job,link",
        "Latency of a link class (intra, inter) as a job's MeshHook fitted it from its timings.",
    ),
    _spec(
        "comm.link_fitted_bytes_per_s",
        GAUGE,
        "bytes/s",
        "job,link",
        "Bandwidth of a link class as a job's MeshHook fitted it (inter: a node's total).",
    ),
    _spec(
        "comm.plan_step_seconds",
        GAUGE,
        "seconds",
        "job,strategy",
        "Median collective seconds per step a job's MeshHook measured under one plan "
        "(strategy = algorithm/compression/fusion bytes).",
    ),
    _spec(
        "train.straggler",
        EVENT,
        "ratio",
        "job, rank",
        "A rank the MeshHook found slower than the others for several windows "
        "(busy time per step over the other ranks' median).",
    ),
]

SIGNALS: dict[str, SignalSpec] = {s.name: s for s in _TABLE}
"""Every known signal by name."""


def kind_of(name: str) -> str:
    """The kind of ``name``; unknown names (third-party collectors) are gauges."""
    spec = SIGNALS.get(name)
    return spec.kind if spec is not None else GAUGE


def is_known(name: str) -> bool:
    return name in SIGNALS
