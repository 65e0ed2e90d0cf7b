"""The sample model, the collector registry and what an agent gets on this machine."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from infermesh.core.errors import UsageError
from infermesh.signal import (
    Collector,
    CollectorError,
    Sample,
    UnknownCollector,
    create_collector,
    default_collectors,
    format_labels,
    known_collectors,
    parse_labels,
    register_collector,
)
from infermesh.signal.host import HostCollector
from infermesh.signal.names import SIGNALS

DOC = Path(__file__).resolve().parents[2] / "docs" / "SIGNALS.md"


def test_labels_are_canonical_sorted_and_checked() -> None:
    assert format_labels(node="a", gpu=3, rank=None, link="") == "gpu=3,node=a"
    assert parse_labels("gpu=3,node=a") == {"gpu": "3", "node": "a"}
    assert parse_labels("") == {}
    with pytest.raises(UsageError, match="sample label 'request_id' is not allowed; use one of"):
        format_labels(request_id="x")
    with pytest.raises(UsageError, match="must not contain ',' or '='"):
        format_labels(model="a,b")
    with pytest.raises(UsageError, match="expected 'key=value,key=value'"):
        parse_labels("gpu")


def test_an_unknown_collector_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownCollector) as info:
        create_collector("nvlm")
    message = str(info.value)
    assert message.startswith("unknown collector 'nvlm'; known: ")
    for name in ("collective", "dcgm", "fake_dcgm", "fake_nvml", "host", "nvml", "runtime"):
        assert name in message


def test_an_option_a_collector_does_not_take_is_named() -> None:
    with pytest.raises(
        CollectorError, match=r"collector 'host' does not accept options \['gpus'\]"
    ):
        create_collector("host", gpus=8)


def test_a_registered_collector_is_created_by_name() -> None:
    class Constant(Collector):
        name = "constant"

        def __init__(self, value: float = 1.0) -> None:
            self.value = value

        def collect(self, now: float) -> list[Sample]:
            return [Sample("custom.value", self.value, now)]

    register_collector("constant", Constant)
    assert "constant" in known_collectors()
    c = create_collector("constant", value=4.0)
    assert c.collect(2.0) == [Sample("custom.value", 4.0, 2.0)]
    assert c.inventory().no_gpu == "constant does not report GPUs"


def test_an_agent_without_a_driver_reports_host_signals_and_says_no_gpu_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvidia = Path("/proc/driver/nvidia/version").exists()
    if nvidia:
        pytest.skip("this machine has an NVIDIA driver")
    with caplog.at_level(logging.INFO, logger="infermesh.signal.nvml"):
        collectors = default_collectors()
        try:
            assert [c.name for c in collectors] == ["host", "nvml"]
            host, nvml = collectors
            for t in range(3):
                assert nvml.collect(float(t)) == []
            time.sleep(0.15)
            names = {s.name for s in host.collect(1.0)}
            inv = nvml.inventory()
        finally:
            for c in collectors:
                c.close()
    assert {"host.cpu_percent", "host.mem_used_bytes", "host.load1"} <= names
    assert inv.no_gpu is not None and "no NVIDIA driver" in inv.no_gpu
    assert len([r for r in caplog.records if "no GPU" in r.getMessage()]) == 1


def test_host_values_are_plausible() -> None:
    with HostCollector() as c:
        first = {s.name for s in c.collect(0.0)}
        time.sleep(0.15)
        got = {(s.name, s.labels): s.value for s in c.collect(1.0)}
        inv = c.inventory()
    assert "host.cpu_percent" not in first  # too soon after start to measure
    assert 0.0 <= got[("host.cpu_percent", "")] <= 100.0
    assert 0 < got[("host.mem_used_bytes", "")] < got[("host.mem_total_bytes", "")]
    assert got[("host.cpu_count", "")] >= 1
    assert not any(labels == "iface=lo" for _, labels in got)
    assert int(inv.details["cpus"]) >= 1


def test_a_bad_interface_pattern_names_the_fix() -> None:
    with pytest.raises(UsageError, match=r"ifaces '\(' is not a regular expression"):
        HostCollector(ifaces="(")


def test_every_signal_is_documented_with_its_kind() -> None:
    text = DOC.read_text()
    documented = dict(re.findall(r"^\| `([a-z_.0-9]+)` \| (gauge|counter|event) \|", text, re.M))
    assert documented == {name: spec.kind for name, spec in SIGNALS.items()}
