"""Collective telemetry from training workers to the local agent over zmq IPC.

Inside a worker, :class:`CollectiveSender` batches one :class:`CollectiveRecord` per timed
collective (the :class:`~infermesh.train.hooks.MeshHook` adds them when the environment
variable :data:`IPC_ENV` names the agent's endpoint) and pushes a :class:`CollectiveMessage`
per step. Sending never blocks training: messages wait in the socket's queue while the
agent is slow or not there yet; beyond its high-water mark (``hwm`` messages) they are
dropped and counted (the count rides on the next message that gets through).

In the agent, :class:`CollectiveReceiver` binds the endpoint and :class:`CollectiveCollector`
turns what arrived since the last collection into samples: cumulative bytes, seconds and
counts per (job, rank, link class, algorithm), the effective bandwidth per link class, the
job's gradient and bucket bytes (``comm.grad_bytes`` / ``comm.bucket_bytes``, from the
``shape`` the hook sends) and the link figures rank 0's hook fitted from its timings
(``comm.link_latency_s`` / ``comm.link_fitted_bytes_per_s``, from ``links``) and the
collective seconds per step it measured under each plan it ran (``comm.plan_step_seconds``,
from ``measured``).
:func:`job_figures` reads a job's figures back out of samples: the coordinator plans the
job's collectives from them, ``infermesh topo plan JOB`` prints them.

Wire format (one zmq frame, UTF-8 JSON, version 1)::

    {"v": 1, "job": "j1", "rank": 3, "dropped": 0,
     "records": [[ts, step, algorithm, compression, group, bytes, seconds, emulated], ...],
     "shape": [grad_bytes, bucket_bytes, backend],      # optional
     "links": [intra_latency_s, intra_Bps, inter_latency_s, node_Bps],  # optional
     "measured": [[algorithm, compression, fusion_bytes, seconds_per_step], ...]}  # optional
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import median

import zmq

from infermesh.core.errors import UsageError
from infermesh.signal.api import Collector, CollectorError, Sample, format_labels, parse_labels

logger = logging.getLogger(__name__)

__all__ = [
    "FIGURE_SIGNALS",
    "IPC_ENV",
    "CollectiveCollector",
    "CollectiveMessage",
    "CollectiveReceiver",
    "CollectiveRecord",
    "CollectiveSender",
    "JobFigures",
    "ipc_endpoint",
    "job_figures",
    "link_class",
    "sender_from_env",
]

IPC_ENV = "INFERMESH_SIGNAL_IPC"
"""Set by the agent for its workers: the zmq endpoint of its collective receiver."""

VERSION = 1
_IPC_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
_LINKS = {"world": "world", "intra": "intra", "inter": "inter", "leaders": "inter"}


def link_class(group: str) -> str:
    """The link class a collective group runs on: ``intra`` (inside a node: NVLink/PCIe),
    ``inter`` (between nodes: the network) or ``world`` (the whole job, both kinds)."""
    return _LINKS.get(group, "world")


def ipc_endpoint(path: str) -> str:
    """``ipc://<path>``, checked against the Unix socket path limit."""
    if len(os.fsencode(path)) > _IPC_PATH_MAX:
        raise UsageError(
            f"IPC socket path {path!r} is {len(os.fsencode(path))} bytes; Unix sockets allow "
            f"{_IPC_PATH_MAX}. Use a shorter run directory (or TMPDIR)"
        )
    return "ipc://" + path


@dataclass(frozen=True, slots=True)
class CollectiveRecord:
    """One timed collective as a worker saw it."""

    ts: float
    """Unix time the collective finished."""
    step: int
    algorithm: str
    compression: str
    group: str
    """``world``, ``intra``, ``inter`` or ``leaders`` (see the MeshHook)."""
    bytes: int
    seconds: float
    emulated: bool = False


@dataclass(frozen=True, slots=True)
class CollectiveMessage:
    """What one worker sends at once: its identity and a batch of records."""

    job: str
    rank: int
    records: tuple[CollectiveRecord, ...]
    dropped: int = 0
    """Messages this sender dropped (agent absent or slow) since its previous message."""
    stragglers: tuple[tuple[int, int, float, float], ...] = ()
    """(step, rank, busy seconds/step, other ranks' median) of ranks the hook found slow."""
    shape: tuple[int, int, str] | None = None
    """(gradient bytes per step, DDP bucket bytes, backend) of the sender's job."""
    links: tuple[float, float, float, float] | None = None
    """Fitted (intra latency s, intra bytes/s, inter latency s, a node's inter bytes/s)."""
    measured: tuple[tuple[str, str, int, float], ...] = ()
    """(algorithm, compression, fusion bytes, median collective seconds per step) of each
    plan rank 0 ran."""

    def encode(self) -> bytes:
        rows = [
            [r.ts, r.step, r.algorithm, r.compression, r.group, r.bytes, r.seconds, r.emulated]
            for r in self.records
        ]
        doc = {"v": VERSION, "job": self.job, "rank": self.rank, "dropped": self.dropped}
        doc["records"] = rows
        if self.stragglers:
            doc["stragglers"] = [list(s) for s in self.stragglers]
        if self.shape is not None:
            doc["shape"] = list(self.shape)
        if self.links is not None:
            doc["links"] = list(self.links)
        if self.measured:
            doc["measured"] = [list(m) for m in self.measured]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, frame: bytes) -> CollectiveMessage:
        """Parse one frame; raise :class:`UsageError` naming what is wrong with it."""
        try:
            doc = json.loads(frame)
            if doc.get("v") != VERSION:
                raise UsageError(
                    f"collective message version {doc.get('v')!r}; this agent reads {VERSION}: "
                    "run workers and agent from the same InferMesh version"
                )
            records = tuple(
                CollectiveRecord(
                    float(ts), int(step), str(alg), str(comp), str(grp), int(nb), float(s), bool(e)
                )
                for ts, step, alg, comp, grp, nb, s, e in doc["records"]
            )
            stragglers = tuple(
                (int(step), int(rank), float(busy), float(others))
                for step, rank, busy, others in doc.get("stragglers", ())
            )
            shape = links = None
            if "shape" in doc:
                grad, bucket, backend = doc["shape"]
                shape = (int(grad), int(bucket), str(backend))
            if "links" in doc:
                a_i, b_i, a_e, b_e = (float(x) for x in doc["links"])
                links = (a_i, b_i, a_e, b_e)
            measured = tuple(
                (str(alg), str(comp), int(fusion), float(seconds))
                for alg, comp, fusion, seconds in doc.get("measured", ())
            )
            return cls(
                str(doc["job"]),
                int(doc["rank"]),
                records,
                int(doc.get("dropped", 0)),
                stragglers,
                shape,
                links,
                measured,
            )
        except UsageError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"malformed collective message ({exc}): {frame[:80]!r}") from exc


class CollectiveSender:
    """Worker side: batches records and pushes them without ever blocking.

    Thread-safe (the hook records from the backend's callback threads).
    """

    def __init__(
        self, endpoint: str, *, job: str, rank: int, batch: int = 256, hwm: int = 1000
    ) -> None:
        self.endpoint, self.job, self.rank, self.batch = endpoint, job, rank, batch
        self._lock = threading.Lock()
        self._pending: list[CollectiveRecord] = []
        self._stragglers: list[tuple[int, int, float, float]] = []
        self.dropped = 0
        self.sent = 0
        self.shape: tuple[int, int, str] | None = None
        """(gradient bytes per step, bucket bytes, backend): sent with every message."""
        self.links: tuple[float, float, float, float] | None = None
        """Rank 0's fitted link figures (see :attr:`CollectiveMessage.links`), likewise."""
        self.measured: tuple[tuple[str, str, int, float], ...] = ()
        """Rank 0's measured plans (see :attr:`CollectiveMessage.measured`), likewise."""
        self._unreported = 0
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 200)
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise UsageError(
                f"cannot connect collective telemetry to {endpoint!r} ({exc}); "
                f"{IPC_ENV} must be an endpoint like ipc:///tmp/infermesh-agent.sock"
            ) from exc

    def add(self, record: CollectiveRecord) -> None:
        with self._lock:
            self._pending.append(record)
            if len(self._pending) >= self.batch:
                self._flush_locked()

    def straggler(self, step: int, rank: int, busy_s: float, others_median_s: float) -> None:
        """Report a slow rank (sent with the next flush)."""
        with self._lock:
            self._stragglers.append((step, rank, busy_s, others_median_s))

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not (self._pending or self._stragglers) or self._sock.closed:
            return
        msg = CollectiveMessage(
            self.job,
            self.rank,
            tuple(self._pending),
            self._unreported,
            tuple(self._stragglers),
            self.shape,
            self.links,
            self.measured,
        )
        self._pending = []
        self._stragglers = []
        try:
            self._sock.send(msg.encode(), zmq.NOBLOCK)
            self.sent += 1
            self._unreported = 0
        except zmq.Again:
            self.dropped += 1
            self._unreported += 1

    def close(self) -> None:
        with self._lock:
            self._flush_locked()
            self._sock.close()


def sender_from_env(job: str, rank: int) -> CollectiveSender | None:
    """A sender to ``$INFERMESH_SIGNAL_IPC``, or None when the variable is unset."""
    endpoint = os.environ.get(IPC_ENV)
    if not endpoint:
        return None
    return CollectiveSender(endpoint, job=job, rank=rank)


class CollectiveReceiver:
    """Agent side: binds ``endpoint`` (``ipc://path`` or ``tcp://127.0.0.1:*``) and reads."""

    def __init__(self, endpoint: str, *, hwm: int = 10_000) -> None:
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise CollectorError(
                f"cannot bind the collective receiver to {endpoint!r}: {exc}; pass a free "
                "endpoint (ipc:///path/agent.sock whose folder exists, or tcp://127.0.0.1:*)"
            ) from exc
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.malformed = 0

    def receive(self, timeout_ms: int = 0, max_messages: int = 10_000) -> list[CollectiveMessage]:
        """Messages waiting now (waiting up to ``timeout_ms`` for the first one)."""
        out: list[CollectiveMessage] = []
        if timeout_ms and not self._sock.poll(timeout_ms, zmq.POLLIN):
            return out
        while len(out) < max_messages:
            try:
                frame = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                out.append(CollectiveMessage.decode(frame))
            except UsageError as exc:
                self.malformed += 1
                if self.malformed == 1:
                    logger.warning("collective receiver: %s (later ones counted only)", exc)
        return out

    def close(self) -> None:
        self._sock.close(0)


@dataclass
class _Totals:
    bytes: float = 0.0
    seconds: float = 0.0
    count: float = 0.0
    ts: float = 0.0


@dataclass
class _Interval:
    bytes: float = 0.0
    seconds: float = 0.0
    ts: float = 0.0


class CollectiveCollector(Collector):
    """Turns the workers' collective messages into samples (agent side).

    :param endpoint: where to bind the receiver (give workers the same string in
        ``INFERMESH_SIGNAL_IPC``); ``receiver`` instead reuses a bound one.
    """

    name = "collective"

    def __init__(
        self, endpoint: str | None = None, *, receiver: CollectiveReceiver | None = None
    ) -> None:
        if (endpoint is None) == (receiver is None):
            raise CollectorError(
                "collective collector needs exactly one of endpoint "
                "(e.g. ipc:///tmp/infermesh-agent.sock) or receiver"
            )
        self.receiver = receiver if receiver is not None else CollectiveReceiver(str(endpoint))
        self._totals: dict[str, _Totals] = defaultdict(_Totals)
        self._dropped = 0.0

    @property
    def endpoint(self) -> str:
        return self.receiver.endpoint

    def collect(self, now: float) -> list[Sample]:
        interval: dict[str, _Interval] = defaultdict(_Interval)
        touched: set[str] = set()
        out_events: list[Sample] = []
        dropped = False
        shapes: dict[str, tuple[int, int, str]] = {}
        fitted: dict[str, tuple[float, float, float, float]] = {}
        plans: dict[str, tuple[tuple[str, str, int, float], ...]] = {}
        for msg in self.receiver.receive():
            if msg.shape is not None:
                shapes[msg.job] = msg.shape
            if msg.links is not None:
                fitted[msg.job] = msg.links
            if msg.measured:
                plans[msg.job] = msg.measured
            if msg.dropped:
                self._dropped += msg.dropped
                dropped = True
            rank = str(msg.rank)
            for step, slow, busy, others in msg.stragglers:
                ratio = busy / others if others > 0 else 0.0
                labels = format_labels(job=msg.job, rank=str(slow))
                out_events.append(Sample("train.straggler", ratio, now, labels))
                logger.warning(
                    "job %s: rank %d is a straggler at step %d (%.1fx)", msg.job, slow, step, ratio
                )
            for r in msg.records:
                link = link_class(r.group)
                key = format_labels(job=msg.job, rank=rank, link=link, strategy=r.algorithm)
                t = self._totals[key]
                t.bytes += r.bytes
                t.seconds += r.seconds
                t.count += 1
                t.ts = max(t.ts, r.ts)
                touched.add(key)
                iv = interval[link]
                iv.bytes += r.bytes
                iv.seconds += r.seconds
                iv.ts = max(iv.ts, r.ts)
        out: list[Sample] = out_events
        for job, (grad, bucket, backend) in shapes.items():
            shape_labels = format_labels(job=job, backend=backend)
            out.append(Sample("comm.grad_bytes", grad, now, shape_labels))
            out.append(Sample("comm.bucket_bytes", bucket, now, format_labels(job=job)))
        for job, (a_i, b_i, a_e, b_e) in fitted.items():
            for link, latency, bandwidth in (("intra", a_i, b_i), ("inter", a_e, b_e)):
                labels = format_labels(job=job, link=link)
                out.append(Sample("comm.link_latency_s", latency, now, labels))
                out.append(Sample("comm.link_fitted_bytes_per_s", bandwidth, now, labels))
        for job, measured in plans.items():
            for alg, comp, fusion, seconds in measured:
                labels = format_labels(job=job, strategy=f"{alg}/{comp}/{fusion}")
                out.append(Sample("comm.plan_step_seconds", seconds, now, labels))
        for key in touched:
            t = self._totals[key]
            out.append(Sample("comm.allreduce_bytes", t.bytes, t.ts, key))
            out.append(Sample("comm.allreduce_seconds", t.seconds, t.ts, key))
            out.append(Sample("comm.allreduce_count", t.count, t.ts, key))
        for link, iv in interval.items():
            if iv.seconds > 0:
                out.append(
                    Sample(
                        "comm.link_bandwidth_bytes_per_s",
                        iv.bytes / iv.seconds,
                        iv.ts,
                        f"link={link}",
                    )
                )
        if dropped:
            out.append(Sample("comm.dropped", self._dropped, now))
        return out

    def close(self) -> None:
        self.receiver.close()


@dataclass(frozen=True)
class JobFigures:
    """What the signal plane measured of one training job (zeros: not reported yet)."""

    grad_bytes: int = 0
    """Gradient bytes all-reduced per step (the MeshHook's model)."""
    bucket_bytes: int = 0
    """DDP's bucket size."""
    backend: str = ""
    """``gloo`` or ``nccl``."""
    bandwidths: dict[str, float] = field(default_factory=dict)
    """Median measured bandwidth (bytes/s) by link class (``intra``, ``inter``, ``world``)
    over the nodes the samples came from."""
    fitted: dict[str, tuple[float, float]] = field(default_factory=dict)
    """``(latency s, bytes/s)`` by link class (``intra``; ``inter``: a node's total) as rank 0's
    hook fitted them from its own timings; empty until it has."""
    plan_seconds: dict[str, float] = field(default_factory=dict)
    """Measured collective seconds per step by plan (``algorithm/compression/fusion bytes``),
    of each plan rank 0 ran."""


def job_figures(job: str, samples: Iterable[tuple[str, str, float]]) -> JobFigures:
    """The figures of ``job`` in ``(name, labels, value)`` samples of its nodes' signals."""
    grad = bucket = 0
    backend = ""
    measured: dict[str, list[float]] = defaultdict(list)
    latency: dict[str, float] = {}
    fitted_bw: dict[str, float] = {}
    plan_seconds: dict[str, float] = {}
    for name, labels, value in samples:
        if name == "comm.link_bandwidth_bytes_per_s":
            measured[parse_labels(labels).get("link", "world")].append(value)
        elif name in _JOB_SIGNALS:
            parsed = parse_labels(labels)
            if parsed.get("job") != job:
                continue
            if name == "comm.grad_bytes":
                grad, backend = int(value), parsed.get("backend", "")
            elif name == "comm.bucket_bytes":
                bucket = int(value)
            elif name == "comm.link_latency_s":
                latency[parsed.get("link", "")] = value
            elif name == "comm.plan_step_seconds":
                plan_seconds[parsed.get("strategy", "")] = value
            else:
                fitted_bw[parsed.get("link", "")] = value
    fitted: dict[str, tuple[float, float]] = {
        link: (latency[link], fitted_bw[link])
        for link in ("intra", "inter")
        if link in latency and link in fitted_bw
    }
    bandwidths = {k: median(v) for k, v in measured.items()}
    return JobFigures(grad, bucket, backend, bandwidths, fitted, plan_seconds)


_JOB_SIGNALS = frozenset(
    (
        "comm.grad_bytes",
        "comm.bucket_bytes",
        "comm.link_latency_s",
        "comm.link_fitted_bytes_per_s",
        "comm.plan_step_seconds",
    )
)
FIGURE_SIGNALS = _JOB_SIGNALS | {"comm.link_bandwidth_bytes_per_s"}
"""The signals :func:`job_figures` reads: all a node needs to give for planning."""
