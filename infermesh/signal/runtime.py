"""Model-server runtime collector: scrape ``/metrics`` of vLLM, SGLang, TGI, Triton or ours.

Each runtime names its metrics differently; one table per runtime maps them to our
``runtime.*`` signals (docs/SIGNALS.md has the full table). Values are summed per model
(``model`` label from the runtime's ``model_name`` / ``model`` label). Histograms become
interval statistics: the p50 and p95 of time-to-first-token, and the mean queue time, of
the requests observed *since the previous scrape* (nothing is reported for an interval with
no requests, nor at the first scrape). Our own model server exposes vLLM's names.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from infermesh.core.errors import UsageError
from infermesh.signal._promtext import check_url, fetch, flatten, histogram_quantile
from infermesh.signal.api import Collector, Sample, format_labels

logger = logging.getLogger(__name__)

__all__ = ["RUNTIMES", "RuntimeCollector", "RuntimeMap"]


@dataclass(frozen=True)
class RuntimeMap:
    """How one runtime's metric names map to ours."""

    prefix: str
    """A prefix only this runtime's metric names have (used by ``kind="auto"``)."""
    model_label: str
    values: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Runtime sample name (counters without ``_total``) -> (our signal, scale); summed
    per model."""
    ttft: str = ""
    """Histogram base name of time to first token (seconds)."""
    queue_hist: str = ""
    """Histogram base name of queue time (seconds) -> runtime.queue_mean_s."""
    queue_counter: tuple[str, str, float] = ("", "", 1.0)
    """(cumulative queue time, cumulative requests, scale to seconds) -> runtime.queue_mean_s."""


_VLLM = RuntimeMap(
    prefix="vllm:",
    model_label="model_name",
    values={
        "vllm:num_requests_running": ("runtime.requests_running", 1.0),
        "vllm:num_requests_waiting": ("runtime.requests_waiting", 1.0),
        "vllm:kv_cache_usage_perc": ("runtime.kv_cache_usage", 1.0),
        "vllm:gpu_cache_usage_perc": ("runtime.kv_cache_usage", 1.0),  # vLLM v0 name
        "vllm:prefix_cache_hits": ("runtime.prefix_cache_hits", 1.0),
        "vllm:prefix_cache_queries": ("runtime.prefix_cache_queries", 1.0),
        "vllm:request_success": ("runtime.requests_total", 1.0),
    },
    ttft="vllm:time_to_first_token_seconds",
)

RUNTIMES: dict[str, RuntimeMap] = {
    "vllm": _VLLM,
    "infermesh": _VLLM,
    "sglang": RuntimeMap(
        prefix="sglang:",
        model_label="model_name",
        values={
            "sglang:num_running_reqs": ("runtime.requests_running", 1.0),
            "sglang:num_queue_reqs": ("runtime.requests_waiting", 1.0),
            "sglang:token_usage": ("runtime.kv_cache_usage", 1.0),
            "sglang:cache_hit_rate": ("runtime.prefix_cache_hit_rate", 1.0),
            "sglang:num_requests": ("runtime.requests_total", 1.0),
        },
        ttft="sglang:time_to_first_token_seconds",
    ),
    "tgi": RuntimeMap(
        prefix="tgi_",
        model_label="model",
        values={
            "tgi_batch_current_size": ("runtime.requests_running", 1.0),
            "tgi_queue_size": ("runtime.requests_waiting", 1.0),
            "tgi_request_success": ("runtime.requests_total", 1.0),
        },
        queue_hist="tgi_request_queue_duration",
    ),
    "triton": RuntimeMap(
        prefix="nv_inference_",
        model_label="model",
        values={
            "nv_inference_pending_request_count": ("runtime.requests_waiting", 1.0),
            "nv_inference_request_success": ("runtime.requests_total", 1.0),
        },
        queue_counter=("nv_inference_queue_duration_us", "nv_inference_request_success", 1e-6),
    ),
}
"""Runtime name -> its metric map. ``infermesh`` (our model server) uses vLLM's names."""


class RuntimeCollector(Collector):
    """Scrapes one model server's ``/metrics``.

    :param url: the server, e.g. ``http://127.0.0.1:8000/metrics``.
    :param kind: ``auto`` (detect from the metric names at each scrape) or a key of RUNTIMES.
    :param model: label the samples with this model instead of the runtime's label.
    """

    name = "runtime"

    def __init__(
        self, url: str, *, kind: str = "auto", model: str | None = None, timeout_s: float = 2.0
    ) -> None:
        if kind != "auto" and kind not in RUNTIMES:
            raise UsageError(
                f"unknown runtime kind {kind!r}; known: auto, {', '.join(sorted(RUNTIMES))}"
            )
        self.url = check_url(url, "runtime")
        self.kind = kind
        self.model = model
        self._timeout = timeout_s
        self._prev_hist: dict[tuple[str, str], dict[float, float]] = {}
        self._prev_sum: dict[tuple[str, str], tuple[float, float]] = {}
        self._failing = False
        self._warned_kind = False

    def _detect(self, text: str) -> RuntimeMap | None:
        if self.kind != "auto":
            return RUNTIMES[self.kind]
        for kind in ("vllm", "sglang", "tgi", "triton"):
            if RUNTIMES[kind].prefix in text:
                return RUNTIMES[kind]
        return None

    def collect(self, now: float) -> list[Sample]:
        try:
            text = fetch(self.url, self._timeout)
        except OSError as exc:
            if not self._failing:
                logger.warning("runtime: scraping %s failed: %s (runtime.up=0)", self.url, exc)
            self._failing = True
            return [Sample("runtime.up", 0.0, now)]
        self._failing = False
        rmap = self._detect(text)
        if rmap is None:
            if not self._warned_kind:
                self._warned_kind = True
                logger.warning(
                    "runtime: %s exposes no vLLM, SGLang, TGI or Triton metrics; pass kind=",
                    self.url,
                )
            return [Sample("runtime.up", 1.0, now)]
        return [Sample("runtime.up", 1.0, now), *self._map(text, rmap, now)]

    def _map(self, text: str, rmap: RuntimeMap, now: float) -> list[Sample]:
        sums: dict[tuple[str, str], float] = defaultdict(float)
        hist: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
        hsum: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        qc_time, qc_count, qc_scale = rmap.queue_counter
        for metric, labels, value in flatten(text):
            model = (self.model or labels.get(rmap.model_label, "")).replace(",", "_")
            model = model.replace("=", "_")
            mapped = rmap.values.get(metric)
            if mapped is not None:
                sums[(mapped[0], model)] += value * mapped[1]
            base = metric.rsplit("_", 1)[0]
            if base in (rmap.ttft, rmap.queue_hist):
                if metric.endswith("_bucket"):
                    hist[(base, model)][float(labels["le"])] += value
                elif metric.endswith("_sum"):
                    hsum[(base, model)][0] += value
                elif metric.endswith("_count"):
                    hsum[(base, model)][1] += value
            if qc_time and metric == qc_time:
                hsum[(qc_time, model)][0] += value * qc_scale
            if qc_count and metric == qc_count:
                hsum[(qc_time, model)][1] += value
        out = [
            Sample(name, value, now, format_labels(model=model))
            for (name, model), value in sums.items()
        ]
        for (base, model), buckets in hist.items():
            if base != rmap.ttft:
                continue
            prev = self._prev_hist.get((base, model))
            self._prev_hist[(base, model)] = dict(buckets)
            if prev is None:
                continue
            delta = [(le, c - prev.get(le, 0.0)) for le, c in buckets.items()]
            if any(c < 0 for _, c in delta):
                continue  # the runtime restarted: counts went back
            lab = format_labels(model=model)
            for q, name in ((0.5, "runtime.ttft_p50_s"), (0.95, "runtime.ttft_p95_s")):
                v = histogram_quantile(q, delta)
                if v is not None:
                    out.append(Sample(name, v, now, lab))
        for (base, model), (total, count) in hsum.items():
            if base not in (rmap.queue_hist, qc_time) or not base:
                continue
            prev_tc = self._prev_sum.get((base, model))
            self._prev_sum[(base, model)] = (total, count)
            if prev_tc is None:
                continue
            dt, dn = total - prev_tc[0], count - prev_tc[1]
            if dn > 0 and dt >= 0:
                out.append(Sample("runtime.queue_mean_s", dt / dn, now, format_labels(model=model)))
        return out
