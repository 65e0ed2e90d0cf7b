"""The signal plane (floor 2): collectors, the sample model and fusion into node state.

Read :mod:`infermesh.signal.api` first (samples, batches, the Collector interface and its
registry), then :mod:`infermesh.signal.fusion` (what the coordinator keeps per node).
"""

from infermesh.signal.api import (
    SAMPLE_LABEL_KEYS,
    Collector,
    CollectorError,
    GpuInfo,
    NodeInventory,
    Sample,
    SampleBatch,
    UnknownCollector,
    create_collector,
    default_collectors,
    format_labels,
    known_collectors,
    parse_labels,
    register_collector,
)
from infermesh.signal.fusion import Health, NodeState, NodeView, SignalTable

__all__ = [
    "SAMPLE_LABEL_KEYS",
    "Collector",
    "CollectorError",
    "GpuInfo",
    "Health",
    "NodeInventory",
    "NodeState",
    "NodeView",
    "Sample",
    "SampleBatch",
    "SignalTable",
    "UnknownCollector",
    "create_collector",
    "default_collectors",
    "format_labels",
    "known_collectors",
    "parse_labels",
    "register_collector",
]
