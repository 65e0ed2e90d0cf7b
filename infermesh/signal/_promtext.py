"""Fetch and flatten a Prometheus text exposition (shared by the dcgm and runtime scrapers)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families

from infermesh.core.errors import UsageError

__all__ = ["check_url", "fetch", "flatten", "histogram_quantile"]


def check_url(url: str, what: str) -> str:
    """``url`` with ``/metrics`` appended when it names only a host; errors name the fix."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(
            f"{what} url {url!r} must start with http:// or https:// "
            "(for example http://127.0.0.1:9400/metrics)"
        )
    rest = url.split("://", 1)[1]
    return url if "/" in rest else url + "/metrics"


def fetch(url: str, timeout_s: float) -> str:
    """GET ``url``; raise OSError (URLError, timeouts, HTTP errors) on failure."""
    req = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        body: bytes = resp.read()
    return body.decode("utf-8", errors="replace")


def flatten(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """Every sample of ``text`` as ``(sample name, labels, value)``.

    Counters are yielded under their family name, without ``_total`` (exporters differ on
    writing it; the parser adds it where missing) and without ``_created`` samples.
    """
    for family in text_string_to_metric_families(text):
        counter = family.type == "counter"
        for s in family.samples:
            if counter:
                if s.name.endswith("_created"):
                    continue
                yield family.name, s.labels, float(s.value)
            else:
                yield s.name, s.labels, float(s.value)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, linearly
    interpolated inside the bucket (as PromQL's ``histogram_quantile``); None if empty."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            width = count - prev_count
            frac = (rank - prev_count) / width if width > 0 else 1.0
            return prev_bound + (bound - prev_bound) * frac
        prev_bound, prev_count = bound, count
    return prev_bound
