"""Simulator configuration: typed dataclasses, YAML loading and validation.

Every assumption of the model is a key here. :func:`parse` turns a plain mapping (from
YAML) into a :class:`SimConfig`; every problem becomes one line naming the key, the value
and what is allowed, and all of them are raised together as :class:`ConfigError`.
Range checks live in field metadata (``gt``, ``ge``, ``le``, ``choices``).

This validator and :mod:`infermesh.core.config` (Hydra compose, then
``to_dataclass``: type checks only, first problem only, its own wording) do the same job
twice. They are left apart on purpose for now: merging means moving this one (nested
dataclasses, mappings, ranges, all problems at once) into ``core`` and making
``to_dataclass`` report through it, which changes the wording of the job-config errors
that other tests pin. The right moment is when the router's config needs ranges too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infermesh.core.errors import UsageError

__all__ = [
    "REQUEST_KINDS",
    "Arrival",
    "Autoscaler",
    "ConfigError",
    "Faults",
    "Fleet",
    "GpuProfile",
    "MmppState",
    "Network",
    "RequestType",
    "Router",
    "Service",
    "SignalSpec",
    "Signals",
    "SimConfig",
    "Tenants",
    "TokenDist",
    "Workload",
    "dump",
    "load",
    "parse",
    "strategy_problems",
    "to_dict",
]

REQUEST_KINDS = ("llm", "vision", "asr")


class ConfigError(UsageError):
    """One or more configuration problems; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _m(help: str, **checks: Any) -> dict[str, Any]:
    """Field metadata: a help text and range checks (``gt``, ``ge``, ``le``, ``choices``)."""
    return {"help": help, **checks}


def _f(default: Any, help: str = "", **checks: Any) -> Any:
    """A dataclass field with an immutable default, a help text and range checks."""
    return field(default=default, metadata=_m(help, **checks))


@dataclass
class TokenDist:
    """Lognormal token count: ``median * exp(sigma * N(0, 1))``, clipped to [1, max]."""

    median: float = _f(256.0, "median token count", gt=0)
    sigma: float = _f(0.8, "lognormal shape (0 = constant)", ge=0, le=4)
    max: int = _f(8192, "upper clip", ge=1)


@dataclass
class RequestType:
    """One request kind (``llm``, ``vision`` or ``asr``) and its SLO.

    LLM work on a node is ``prefill / prefill_tps + output / decode_tps``; vision and ASR
    work is ``work_s`` (lognormal, seconds on a reference GPU) divided by compute scale.
    """

    weight: float = _f(1.0, "share of requests (normalized over kinds)", ge=0)
    slo_s: float = _f(10.0, "end-to-end latency SLO in seconds", gt=0)
    ttft_slo_s: float = _f(0.0, "time-to-first-token SLO in seconds (0 = none)", ge=0)
    prompt_tokens: TokenDist = field(
        default_factory=lambda: TokenDist(400.0, 0.9, 8192), metadata=_m("prompt tokens (llm)")
    )
    output_tokens: TokenDist = field(
        default_factory=lambda: TokenDist(200.0, 0.7, 2048), metadata=_m("output tokens (llm)")
    )
    work_s: TokenDist = field(
        default_factory=lambda: TokenDist(0.1, 0.5, 100),
        metadata=_m("service seconds on a reference GPU"),
    )
    kv_mb_per_token: float = _f(0.5, "KV cache per token in MB (llm)", ge=0)
    vram_gb: float = _f(0.5, "VRAM held while running (vision/asr)", ge=0)
    request_kb: float = _f(2.0, "request payload in KB (llm adds 4 bytes per token)", ge=0)
    response_kb: float = _f(2.0, "response payload in KB (llm adds 4 bytes per token)", ge=0)
    prefix_fraction: float = _f(0.0, "share of llm requests with a shared prefix", ge=0, le=1)
    prefix_groups_per_tenant: int = _f(4, "distinct shared prefixes per tenant", ge=1)
    prefix_tokens: int = _f(0, "tokens in a shared prefix (added to the prompt)", ge=0)


@dataclass
class MmppState:
    """One MMPP state: a Poisson rate and the mean dwell time before switching."""

    rate_rps: float = _f(100.0, "arrival rate in this state", ge=0)
    dwell_s: float = _f(30.0, "mean time in this state (exponential)", gt=0)


@dataclass
class Arrival:
    """Arrival process: ``poisson`` at ``rate_rps`` or ``mmpp`` over ``states``.

    In an MMPP the next state is drawn uniformly among the other states.
    """

    process: str = _f("poisson", "arrival process", choices=("poisson", "mmpp"))
    rate_rps: float = _f(100.0, "Poisson rate (requests per second)", gt=0)
    states: list[MmppState] = field(
        default_factory=list, metadata=_m("MMPP states (at least 2 for mmpp)")
    )


@dataclass
class Tenants:
    """Tenants with Zipf-skewed traffic; each tenant has a home (origin) cell."""

    count: int = _f(1, "number of tenants", ge=1)
    zipf_s: float = _f(0.0, "Zipf exponent (0 = uniform)", ge=0, le=5)


@dataclass
class Workload:
    """Arrivals, request kinds and tenants."""

    arrival: Arrival = field(default_factory=Arrival, metadata=_m("arrival process"))
    request_types: dict[str, RequestType] = field(
        default_factory=lambda: {"llm": RequestType()},
        metadata=_m("request kinds", keys=REQUEST_KINDS),
    )
    tenants: Tenants = field(default_factory=Tenants, metadata=_m("tenants"))


@dataclass
class GpuProfile:
    """A GPU (or MIG instance) as a serving node; numbers are model assumptions."""

    prefill_tps: float = _f(10000.0, "prompt tokens per second", gt=0)
    decode_tps: float = _f(50.0, "output tokens per second for one request at batch 1", gt=0)
    max_batch: int = _f(32, "max running batch (concurrency)", ge=1)
    vram_gb: float = _f(80.0, "device memory", gt=0)
    weights_gb: float = _f(20.0, "memory held by weights and activations", ge=0)
    price_per_hour: float = _f(3.0, "price of one node-hour", ge=0)
    compute_scale: float = _f(1.0, "speed of vision/asr work relative to H100", gt=0)
    batch_slowdown: float = _f(0.03, "per-request speed = 1 / (1 + k (batch - 1))", ge=0)
    prefix_cache_entries: int = _f(16, "shared prefixes a node keeps cached (LRU)", ge=0)


@dataclass
class Fleet:
    """Cells of nodes; ``mix`` gives the share of each GPU profile in every cell."""

    cells: int = _f(4, "number of cells", ge=1, le=100000)
    nodes_per_cell: int = _f(128, "nodes in each cell", ge=1, le=1000000)
    mix: dict[str, float] = field(
        default_factory=lambda: {"H100": 1.0}, metadata=_m("share of nodes per GPU profile", ge=0)
    )
    profiles: dict[str, GpuProfile] = field(
        default_factory=dict, metadata=_m("extra or overriding GPU profiles")
    )


@dataclass
class Network:
    """Vivaldi-style coordinates for cells; RTT and transfer time are added to latency."""

    spread_ms: float = _f(40.0, "scale of cell coordinates (ms of RTT)", ge=0)
    height_ms: float = _f(1.0, "mean Vivaldi height (access-link latency)", ge=0)
    intra_cell_gbps: float = _f(100.0, "bandwidth when a request stays in its cell", gt=0)
    inter_cell_gbps: float = _f(10.0, "bandwidth when a request crosses cells", gt=0)


@dataclass
class SignalSpec:
    """How often one signal is sampled and how late the router sees it."""

    period_s: float = _f(1.0, "sampling period", gt=0)
    delay_s: float = _f(0.2, "publication delay (age when it arrives)", ge=0)


@dataclass
class Signals:
    """Signal-plane staleness per metric; ``perfect`` shows the true state (explicit only)."""

    perfect: bool = _f(False, "routers see the true state at every decision")
    queue_depth: SignalSpec = field(
        default_factory=lambda: SignalSpec(1.0, 0.2), metadata=_m("queued + running")
    )
    vram: SignalSpec = field(
        default_factory=lambda: SignalSpec(5.0, 0.5), metadata=_m("free VRAM fraction")
    )
    utilization: SignalSpec = field(
        default_factory=lambda: SignalSpec(5.0, 0.5), metadata=_m("busy fraction over the period")
    )


@dataclass
class Service:
    """Service-time model and node admission.

    ``batching``: continuous batching with the GPU profile's slowdown. ``constant`` and
    ``exponential``: every request needs ``mean_s`` (or Exp(mean_s)) divided by compute
    scale and runs with no batch slowdown, so a node with ``max_batch = c`` is an M/G/c
    queue (used to check the engine against queueing theory).
    """

    model: str = _f(
        "batching", "service-time model", choices=("batching", "constant", "exponential")
    )
    mean_s: float = _f(1.0, "mean service for constant/exponential", gt=0)
    max_queue_per_node: int = _f(64, "waiting requests a node accepts beyond its batch", ge=0)
    max_retries: int = _f(2, "re-routes after a node refuses a request", ge=0)
    retry_backoff_s: float = _f(0.05, "delay before a retry", ge=0)
    hedging: bool = _f(True, "carry out hedges that strategies ask for")
    hedge_budget: float = _f(
        0.1, "most hedge copies sent, as a share of the requests arrived so far", ge=0, le=1
    )


@dataclass
class Autoscaler:
    """Scale idle nodes down after a timeout; scale up with a cold-start delay."""

    enabled: bool = _f(False, "run the autoscaler")
    tick_s: float = _f(5.0, "how often it acts", gt=0)
    idle_timeout_s: float = _f(120.0, "idle time before a node is released", gt=0)
    cold_start_s: float = _f(60.0, "delay before a started node serves", ge=0)
    min_nodes_per_cell: int = _f(1, "nodes never released in a cell", ge=0)
    scale_up_load: float = _f(0.7, "cell load (busy slots / slots) that adds nodes", gt=0)


@dataclass
class Faults:
    """Slow nodes the routers are not told about (a throttled GPU, a bad link).

    A seeded random ``slow_fraction`` of nodes runs at ``slow_speed`` times its normal speed
    from ``start_s`` for ``duration_s`` (0: to the end). Only the effects are visible to
    strategies: longer service, fuller queues.
    """

    slow_fraction: float = _f(0.0, "share of nodes that slow down", ge=0, le=1)
    slow_speed: float = _f(0.1, "their speed as a fraction of normal", gt=0, le=1)
    start_s: float = _f(0.0, "when they slow down", ge=0)
    duration_s: float = _f(0.0, "how long (0 = to the end of the run)", ge=0)


@dataclass
class Router:
    """Strategy host settings and per-strategy options."""

    latency_budget_ms: float = _f(
        2.0, "strategy time per decision before it counts as overrun", gt=0
    )
    enforce_budget: bool = _f(False, "fall back on overrun (makes runs depend on wall time)")
    options: dict[str, dict[str, float]] = field(
        default_factory=dict, metadata=_m("options per strategy name")
    )
    ab_key: str = _f(
        "request",
        "what an A/B split (strategy 'ab:A:B:SPLIT') hashes: each request or each tenant",
        choices=("request", "tenant"),
    )


@dataclass
class SimConfig:
    """A whole simulation scenario."""

    name: str = _f("scenario", "scenario name")
    seed: int = _f(42, "seed of every random draw", ge=0)
    duration_s: float = _f(300.0, "simulated time with arrivals", gt=0)
    warmup_s: float = _f(0.0, "requests arriving earlier are left out of metrics", ge=0)
    drain_s: float = _f(120.0, "time after the last arrival to finish work", ge=0)
    metrics_tick_s: float = _f(10.0, "period of utilization samples", gt=0)
    workload: Workload = field(default_factory=Workload, metadata=_m("workload"))
    fleet: Fleet = field(default_factory=Fleet, metadata=_m("fleet"))
    network: Network = field(default_factory=Network, metadata=_m("network"))
    signals: Signals = field(default_factory=Signals, metadata=_m("signals"))
    service: Service = field(default_factory=Service, metadata=_m("service model"))
    autoscaler: Autoscaler = field(default_factory=Autoscaler, metadata=_m("autoscaler"))
    faults: Faults = field(default_factory=Faults, metadata=_m("slow nodes"))
    router: Router = field(default_factory=Router, metadata=_m("router"))
    strategies: list[str] = field(
        default_factory=list, metadata=_m("strategies to compare (empty = all built-in)")
    )


# ----------------------------------------------------------------------------- parsing


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _range_text(meta: Mapping[str, Any], base: str) -> str:
    parts = []
    if "gt" in meta:
        parts.append(f"> {meta['gt']}")
    if "ge" in meta:
        parts.append(f">= {meta['ge']}")
    if "le" in meta:
        parts.append(f"<= {meta['le']}")
    return f"{base} {' and '.join(parts)}" if parts else base


def _scalar(value: Any, tp: Any, path: str, meta: Mapping[str, Any], errs: list[str]) -> Any:
    desc = _range_text(meta, _describe(tp))
    if tp is bool:
        if isinstance(value, bool):
            return value
        errs.append(f"{path}: value {value!r} is not allowed; allowed: true or false")
        return None
    if tp is str:
        choices = meta.get("choices")
        if not isinstance(value, str) or (choices and value not in choices):
            allowed = ", ".join(choices) if choices else "a string"
            errs.append(f"{path}: value {value!r} is not allowed; allowed: {allowed}")
            return None
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errs.append(f"{path}: value {value!r} is not allowed; allowed: {desc}")
        return None
    if tp is int and not float(value).is_integer():
        errs.append(f"{path}: value {value!r} is not allowed; allowed: {desc}")
        return None
    num = int(value) if tp is int else float(value)
    bad = (
        ("gt" in meta and not num > meta["gt"])
        or ("ge" in meta and not num >= meta["ge"])
        or ("le" in meta and not num <= meta["le"])
    )
    if bad:
        errs.append(f"{path}: value {value!r} is not allowed; allowed: {desc}")
        return None
    return num


def _convert(value: Any, tp: Any, path: str, meta: Mapping[str, Any], errs: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            errs.append(f"{path}: value {value!r} is not allowed; allowed: a mapping")
            return None
        return _build(tp, value, path, errs)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            errs.append(f"{path}: value {value!r} is not allowed; allowed: a list")
            return None
        return [_convert(v, item_tp, f"{path}[{i}]", meta, errs) for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            errs.append(f"{path}: value {value!r} is not allowed; allowed: a mapping")
            return None
        keys = meta.get("keys")
        out = {}
        for k, v in value.items():
            if keys and k not in keys:
                errs.append(f"{path}: key {k!r} is not allowed; allowed: {', '.join(keys)}")
                continue
            item_meta = {} if typing.get_origin(val_tp) is dict else meta
            out[str(k)] = _convert(v, val_tp, f"{path}.{k}", item_meta, errs)
        return out
    if isinstance(tp, types.UnionType):
        raise TypeError(f"unsupported config type {tp}")
    return _scalar(value, tp, path, meta, errs)


def _build(cls: Any, data: Mapping[str, Any], path: str, errs: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        f = names.get(str(key))
        if f is None:
            errs.append(f"{sub}: unknown key; allowed: {', '.join(names)}")
            continue
        converted = _convert(value, hints[f.name], sub, f.metadata, errs)
        if converted is not None:
            kwargs[f.name] = converted
    return cls(**kwargs)


def _check(cfg: SimConfig, errs: list[str]) -> None:
    """Checks that involve more than one key."""
    arr = cfg.workload.arrival
    if arr.process == "mmpp" and len(arr.states) < 2:
        errs.append(
            f"workload.arrival.states: value {len(arr.states)} states is not allowed; "
            "allowed: at least 2 states for process mmpp"
        )
    kinds = cfg.workload.request_types
    if not kinds or sum(t.weight for t in kinds.values()) <= 0:
        errs.append("workload.request_types: no kind has weight > 0; allowed: llm, vision, asr")
    from sim.hardware import catalog  # late import: hardware depends on this module

    known = catalog(cfg.fleet.profiles)
    for name in cfg.fleet.mix:
        if name not in known:
            errs.append(
                f"fleet.mix.{name}: unknown GPU profile; allowed: {', '.join(sorted(known))}"
            )
    if sum(cfg.fleet.mix.values()) <= 0:
        errs.append("fleet.mix: shares sum to 0; allowed: shares with a positive sum")
    if cfg.warmup_s >= cfg.duration_s:
        errs.append(
            f"warmup_s: value {cfg.warmup_s} is not allowed; allowed: less than duration_s "
            f"({cfg.duration_s})"
        )
    from infermesh.serve.strategies import known as known_strategies

    names = known_strategies()
    for i, s in enumerate(cfg.strategies):
        errs.extend(strategy_problems(s, f"strategies[{i}]", names))
    for s in cfg.router.options:
        if s not in names:
            errs.append(f"router.options.{s}: unknown strategy; allowed: {', '.join(names)}")


def strategy_problems(spec: str, key: str, names: list[str] | None = None) -> list[str]:
    """Problems with a strategy name or an A/B spec ``ab:A:B[:SPLIT]`` given as ``key``."""
    from infermesh.serve.strategies import known as known_strategies
    from infermesh.serve.strategies.ab import parse_ab
    from infermesh.serve.strategies.api import StrategyError

    names = names if names is not None else known_strategies()
    allowed = f"allowed: {', '.join(names)}, or ab:A:B[:SPLIT]"
    try:
        ab = parse_ab(spec)
    except StrategyError as exc:
        return [f"{key}: {exc}"]
    if ab is None:
        return [] if spec in names else [f"{key}: value {spec!r} is not allowed; {allowed}"]
    return [
        f"{key}: value {spec!r} names unknown strategy {s!r}; {allowed}"
        for s in (ab.a, ab.b)
        if s not in names
    ]


def parse(data: Mapping[str, Any]) -> SimConfig:
    """Validate ``data`` and build a :class:`SimConfig`; raises :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"(top level): value {data!r} is not allowed; allowed: a mapping"])
    errs: list[str] = []
    cfg = _build(SimConfig, data, "", errs)
    if not errs:
        _check(cfg, errs)
    if errs:
        raise ConfigError(errs)
    return typing.cast(SimConfig, cfg)


def load(path: str | Path) -> SimConfig:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError([f"--config: value {str(p)!r} cannot be read ({exc.strerror})"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"--config: value {str(p)!r} is not valid YAML ({exc})"]) from exc
    return parse(data or {})


def to_dict(cfg: SimConfig) -> dict[str, Any]:
    """The config as plain data (the same shape :func:`parse` reads)."""
    return dataclasses.asdict(cfg)


def dump(cfg: SimConfig | Mapping[str, Any]) -> str:
    """YAML text of a config, keys in declaration order (stable across runs)."""
    data = to_dict(cfg) if isinstance(cfg, SimConfig) else dict(cfg)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
