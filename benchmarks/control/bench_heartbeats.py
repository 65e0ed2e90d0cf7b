"""Heartbeat load on one coordinator: CPU, round trip p50/p99, time to detect a dead node.

One coordinator process (``infermesh coordinator start``, SQLite store in a temporary
directory, pinned to core 0) and one client process (pinned to core 1) that registers
``--agents`` simulated agents. Like a real agent, each opens its Heartbeat stream as soon as
it is registered; the streams are multiplexed over one gRPC channel per
``--streams-per-channel`` streams. Each agent sends one heartbeat a second with 20 telemetry
samples; the agents' send times are spread evenly over the second.

Measured over a steady window (``--duration`` seconds after ``--warmup``):

* coordinator CPU % (psutil, user + system over the window) and its memory;
* heartbeat round trip: the client's send -> the reply carrying that ``ack_seq`` (p50/p99),
  over the probes: the coordinator answers a beat only when it has something to deliver or
  the beat asks (``want_ack``), and every ``--ack-every``-th beat of an agent asks (staggered
  over the agents, so the probes sample every moment of the window evenly);
  *one way*: the agent's ``sent_at`` -> the coordinator's ``received_at`` (same clock);
* client CPU % and how late the client sent (if the client is the bottleneck, it shows here).

Then two agents stop: one goes *silent* (its stream stays open, nothing more is sent), one
*closes* its stream (the RPC is cancelled, like an agent that died). A poller reads
``ListEvents`` for both nodes every 100 ms and reports the time from the agent's last
heartbeat (silent) or from the close (closed) until the coordinator's SUSPECT and DEAD
events, by the coordinator's event time stamps.

    nice .venv/bin/python benchmarks/control/bench_heartbeats.py [--agents 1000 10000]
        [--runs 3] [--duration 20] [--store sqlite|memory] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import REPO, CoordinatorProcess, load_average, median, percentile, pin

from infermesh.client.coordinator import CHANNEL_OPTIONS, async_stub, pb
from infermesh.client.generated import coordinator_pb2_grpc as pb_grpc

SAMPLES = 20
HEARTBEAT_METHOD = "/infermesh.v1.Coordinator/Heartbeat"
POLL_S = 0.1


# ------------------------------------------------------------------ client (own process)
def telemetry_template() -> pb.TelemetryBatch:
    """20 samples like an 8-GPU node's: utilisation, memory and power per GPU, 4 host ones."""
    batch = pb.TelemetryBatch()
    now = time.time()
    names = [("gpu_util", g) for g in range(8)] + [("gpu_mem_used_bytes", g) for g in range(8)]
    for name, gpu in names:
        batch.name.append(name)
        batch.value.append(float(gpu * 7 % 100))
        batch.ts.append(now)
        batch.labels.append(f"gpu={gpu}")
    for name in ("cpu_util", "mem_used_bytes", "net_rx_bytes", "net_tx_bytes"):
        batch.name.append(name)
        batch.value.append(1.0)
        batch.ts.append(now)
        batch.labels.append("")
    assert len(batch.name) == SAMPLES
    return batch


def node_spec(i: int) -> pb.NodeSpec:
    node_id = f"sim-{i:05d}"
    gpus = [
        pb.Gpu(index=g, uuid=f"GPU-{i:05d}-{g}", name="sim", memory_bytes=80 << 30)
        for g in range(8)
    ]
    return pb.NodeSpec(
        node_id=node_id,
        hostname=f"host-{i:05d}",
        rack=f"rack-{i // 40}",
        gpus=gpus,
        cpus=64,
        memory_bytes=512 << 30,
        addresses=[f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"],
        slots=8,
    )


@dataclass
class SimAgent:
    index: int
    node_id: str
    epoch: int
    call: Any = None
    seq: int = 0
    sent: dict[int, tuple[float, float]] = field(default_factory=dict)  # seq -> (perf, wall)
    silent: bool = False
    last_sent_wall: float = 0.0
    acked_after_stop: asyncio.Event = field(default_factory=asyncio.Event)
    stop_after_seq: int = -1
    head: bytes = b""  # node_id and epoch, encoded once


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.telemetry_bytes = pb.AgentHeartbeat(telemetry=telemetry_template()).SerializeToString()
        self.rtt: list[float] = []
        self.one_way: list[float] = []
        self.late: list[float] = []
        self.in_window = False
        self.sent_in_window = 0
        self.end = time.monotonic() + 3600.0  # set when registration is done
        self.fenced = 0
        self.register_retries = 0
        self.lost_streams = 0
        self.errors: list[str] = []

    def say(self, *words: object) -> None:
        print(*words, flush=True)

    async def run(self) -> dict[str, Any]:
        args = self.args
        n = args.agents
        n_channels = max(1, math.ceil(n / args.streams_per_channel))
        channels = [async_stub(args.address) for _ in range(n_channels)]
        admin_channel, admin = async_stub(args.address)
        # Heartbeat calls that take bytes: the load generator serialises each beat by
        # concatenating pre-encoded fields (protobuf merges them), so it keeps up at 10,000
        # agents on one core; the coordinator receives exactly what a real agent sends.
        self.raw_heartbeat = [
            channel.stream_stream(
                HEARTBEAT_METHOD,
                request_serializer=None,
                response_deserializer=pb.CoordinatorMessage.FromString,
            )
            for channel, _ in channels
        ]
        try:
            return await self._run(n, [s for _, s in channels], admin)
        finally:
            for channel, _ in channels:
                await channel.close(grace=None)
            await admin_channel.close(grace=None)

    async def _run(self, n: int, stubs: list[Any], admin: Any) -> dict[str, Any]:
        args = self.args
        agents: list[SimAgent] = []
        tasks: list[asyncio.Task[None]] = []
        limit = asyncio.Semaphore(64)
        phase0 = time.monotonic()

        async def register(i: int) -> None:
            """Register, then beat at once, like a real agent, in this agent's slot."""
            for attempt in range(5):  # a real agent retries too (bounded here)
                try:
                    async with limit:
                        reply = await stubs[i % len(stubs)].Register(
                            pb.RegisterRequest(spec=node_spec(i)), timeout=60
                        )
                    break
                except grpc.aio.AioRpcError as error:
                    self.register_retries += 1
                    if attempt == 4:
                        raise
                    self.errors.append(f"sim-{i:05d} register: {error.code().name}")
                    await asyncio.sleep(0.5 * (attempt + 1))
            agent = SimAgent(i, f"sim-{i:05d}", reply.epoch)
            agent.call = self.raw_heartbeat[i % len(stubs)]()
            agent.head = pb.AgentHeartbeat(
                node_id=agent.node_id, epoch=agent.epoch
            ).SerializeToString()
            agents.append(agent)
            slot = phase0 + i / n
            first = slot + math.ceil(time.monotonic() - slot)
            tasks.append(asyncio.create_task(self._beat(agent, first)))
            tasks.append(asyncio.create_task(self._read(agent)))

        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(register(i) for i in range(n))), 600)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        register_s = time.perf_counter() - t0
        agents.sort(key=lambda a: a.index)
        self.say("registered", f"{register_s:.2f}")

        window_start = time.monotonic() + args.warmup
        window_end = window_start + args.duration
        hard_end = self.end = window_end + args.dead_after + 15.0
        detect: dict[str, Any] = {}
        try:
            await _sleep_until(window_start)
            self.in_window = True
            self.say("window-start")
            await _sleep_until(window_end)
            self.in_window = False
            self.say("window-end")
            if args.detect:
                detect = await self._detect(agents, admin, hard_end)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for agent in agents:
                agent.call.cancel()
        return {
            "agents": n,
            "channels": len(stubs),
            "register_s": register_s,
            "beats": len(self.rtt),
            "rtt_p50_ms": percentile(self.rtt, 0.5) * 1e3,
            "rtt_p99_ms": percentile(self.rtt, 0.99) * 1e3,
            "rtt_max_ms": max(self.rtt, default=float("nan")) * 1e3,
            "one_way_p50_ms": percentile(self.one_way, 0.5) * 1e3,
            "one_way_p99_ms": percentile(self.one_way, 0.99) * 1e3,
            "late_p99_ms": percentile(self.late, 0.99) * 1e3,
            "expected_beats": round(n * args.duration),
            "sent_beats": self.sent_in_window,
            "fenced": self.fenced,
            "register_retries": self.register_retries,
            "lost_streams": self.lost_streams,
            "errors": self.errors[:5],
            **detect,
        }

    async def _beat(self, agent: SimAgent, first: float) -> None:
        due = first
        while due < self.end and not agent.silent:
            await _sleep_until(due)
            if agent.silent:
                return
            now = time.monotonic()
            agent.seq += 1
            wall = time.time()
            # a probe (want_ack) every --ack-every beats, staggered over the agents; the
            # beat that a closing agent waits on is one too
            probe = (agent.seq + agent.index) % self.args.ack_every == 0 or (
                0 <= agent.stop_after_seq <= agent.seq
            )
            beat = (
                agent.head
                + pb.AgentHeartbeat(seq=agent.seq, sent_at=wall, want_ack=probe).SerializeToString()
                + self.telemetry_bytes
            )
            if probe:
                agent.sent[agent.seq] = (time.perf_counter(), wall)
            agent.last_sent_wall = wall
            if self.in_window:
                self.late.append(now - due)
                self.sent_in_window += 1
            try:
                await agent.call.write(beat)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                self.lost_streams += 1
                self.errors.append(f"{agent.node_id} write: {str(error)[:200]}")
                return
            due += 1.0

    async def _read(self, agent: SimAgent) -> None:
        while time.monotonic() < self.end:
            try:
                reply = await agent.call.read()
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    self.lost_streams += 1
                    self.errors.append(f"{agent.node_id} read: {error.code().name}")
                return
            if reply is grpc.aio.EOF:
                return
            got = time.perf_counter()
            sent = agent.sent.pop(reply.ack_seq, None)
            if reply.fenced:  # the coordinator declared this node DEAD (overload): no ack
                self.fenced += 1
                agent.silent = True  # a real agent would register again; this one stops
                if self.fenced <= 3:
                    self.errors.append(f"{agent.node_id} fenced: {reply.fenced}")
            elif sent is not None and self.in_window:
                self.rtt.append(got - sent[0])
                self.one_way.append(reply.received_at - sent[1])
            if agent.stop_after_seq >= 0 and reply.ack_seq >= agent.stop_after_seq:
                agent.acked_after_stop.set()

    async def _detect(self, agents: list[SimAgent], admin: Any, end: float) -> dict[str, Any]:
        """Silence one agent, close another's stream; time the SUSPECT and DEAD events."""
        silent, closed = agents[len(agents) // 3], agents[2 * len(agents) // 3]
        silent.silent = True  # its writer sends nothing more; the stream stays open
        closed.stop_after_seq = closed.seq + 1
        try:  # close right after an acknowledged beat, so "closed" starts from a live node
            await asyncio.wait_for(closed.acked_after_stop.wait(), 10.0)
        except asyncio.TimeoutError:
            self.errors.append(f"{closed.node_id}: no reply within 10 s before closing")
        closed.silent = True
        closed.call.cancel()
        closed_at = time.time()
        self.say("stopped", silent.node_id, closed.node_id)
        marks = {silent.node_id: silent.last_sent_wall, closed.node_id: closed_at}
        names = {silent.node_id: "silent", closed.node_id: "closed"}
        found: dict[str, float] = {}
        polls = 0
        while time.monotonic() < end and len(found) < 4:
            polls += 1
            for node_id, kind in names.items():
                reply = await admin.ListEvents(
                    pb.ListEventsRequest(subject=node_id, limit=10), timeout=10
                )
                for event in reply.events:
                    key = f"{kind}_{event.to_state.lower()}_s"
                    fresh = event.ts >= marks[node_id] - 0.001
                    if event.to_state in ("SUSPECT", "DEAD") and key not in found and fresh:
                        found[key] = event.ts - marks[node_id]
            await asyncio.sleep(POLL_S)
        out: dict[str, Any] = {"detect_polls": polls}
        for kind in ("silent", "closed"):
            for state in ("suspect", "dead"):
                key = f"{kind}_{state}_s"
                out[key] = found.get(key, float("nan"))
        return out


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def client_main(args: argparse.Namespace) -> int:
    gc.freeze()  # the load generator's own collector pauses would show up as late beats
    gc.set_threshold(50_000, 20, 100)
    try:  # the load generator is not what is measured: give it the faster event loop
        import uvloop

        result = uvloop.run(Client(args).run())
    except ImportError:
        result = asyncio.run(Client(args).run())
    print("result", json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------ bare peer server
class BareServicer(pb_grpc.CoordinatorServicer):
    """The floor: gRPC only. Register says epoch 1; Heartbeat parses every beat and answers
    the probes (want_ack), as the coordinator does."""

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        return pb.RegisterResponse(epoch=1, heartbeat_interval_s=1.0, cell="bare")

    async def Heartbeat(self, request_iterator: Any, context: Any) -> Any:
        async for beat in request_iterator:
            if beat.want_ack:
                yield pb.CoordinatorMessage(ack_seq=beat.seq, received_at=time.time())

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Any
    ) -> pb.ListEventsResponse:
        return pb.ListEventsResponse()


def bare_main() -> int:
    """Serve :class:`BareServicer` on a free port until SIGTERM (the CLI's ready line)."""

    async def serve() -> None:
        server = grpc.aio.server(options=CHANNEL_OPTIONS)
        pb_grpc.add_CoordinatorServicer_to_server(BareServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"infermesh: coordinator of cell bare at 127.0.0.1:{port} (bare gRPC)", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0.5)

    asyncio.run(serve())
    return 0


# ------------------------------------------------------------------ orchestrator
def run_once(n: int, args: argparse.Namespace, *, bare: bool = False) -> dict[str, Any]:
    """One coordinator, one client with ``n`` agents; the client's result plus CPU figures."""
    with tempfile.TemporaryDirectory(prefix="infermesh-bench-") as tmp:
        coordinator = CoordinatorProcess(
            Path(tmp),
            store="memory://" if args.store == "memory" else "",
            core=0,
            command=[str(Path(__file__).resolve()), "--role", "bare"] if bare else None,
            suspect_after_s=args.suspect_after,
            dead_after_s=args.dead_after,
        )
        with coordinator:
            argv = [
                *pin(1),
                sys.executable,
                str(Path(__file__).resolve()),
                "--role",
                "client",
                "--address",
                coordinator.address,
                "--agents",
                str(n),
                "--duration",
                str(args.duration),
                "--warmup",
                str(args.warmup),
                "--streams-per-channel",
                str(args.streams_per_channel),
                "--dead-after",
                str(args.dead_after),
                "--ack-every",
                str(args.ack_every),
                *([] if not bare else ["--no-detect"]),
            ]
            budget = 600 + args.warmup + args.duration + args.dead_after + 60
            client = subprocess.Popen(
                argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            watchdog = threading.Timer(budget, client.kill)
            watchdog.start()
            figures: dict[str, Any] = {}
            result: dict[str, Any] | None = None
            other: list[str] = []
            cpu0 = ccpu0 = t0 = 0.0
            try:
                assert client.stdout is not None
                for line in client.stdout:
                    word = line.split(" ", 1)[0].strip()
                    if word == "window-start":
                        t0 = time.perf_counter()
                        cpu0, ccpu0 = coordinator.cpu_seconds(), _cpu(client.pid)
                    elif word == "window-end":
                        wall = time.perf_counter() - t0
                        figures["coord_cpu_s"] = coordinator.cpu_seconds() - cpu0
                        figures["coord_cpu_pct"] = 100 * figures["coord_cpu_s"] / wall
                        figures["client_cpu_pct"] = 100 * (_cpu(client.pid) - ccpu0) / wall
                        figures["coord_rss_mib"] = coordinator.rss_mib()
                    elif word == "result":
                        result = json.loads(line.split(" ", 1)[1])
                    elif word not in ("registered", "stopped"):
                        other.append(line)
                client.wait(timeout=60)
            finally:
                watchdog.cancel()
                if client.poll() is None:
                    client.kill()
                    client.wait()
            if result is None or client.returncode != 0:
                raise RuntimeError(
                    f"the client (n={n}) failed with exit code {client.returncode}:\n"
                    + "".join(other[-40:])
                )
            figures["coord_ready_s"] = coordinator.ready_s
    # CPU per heartbeat sent in the window: a rate that holds when the shared core is contended
    figures["us_per_beat"] = 1e6 * figures["coord_cpu_s"] / max(1, result["sent_beats"])
    figures["agents_per_core"] = 1e6 / figures["us_per_beat"]
    return {**result, **figures}


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


COLUMNS = [
    ("server", "server", "{}"),
    ("agents", "agents", "{:,}"),
    ("channels", "channels", "{:.0f}"),
    ("coord CPU %", "coord_cpu_pct", "{:.0f}"),
    ("CPU µs / beat", "us_per_beat", "{:.0f}"),
    ("µs x bare", "cpu_ratio", "{:.2f}"),
    ("agents / core at 1 Hz", "agents_per_core", "{:,.0f}"),
    ("coord RSS MiB", "coord_rss_mib", "{:.0f}"),
    ("RTT p50 ms", "rtt_p50_ms", "{:.1f}"),
    ("RTT p99 ms", "rtt_p99_ms", "{:.1f}"),
    ("one-way p99 ms", "one_way_p99_ms", "{:.1f}"),
    ("silent: SUSPECT s", "silent_suspect_s", "{:.2f}"),
    ("silent: DEAD s", "silent_dead_s", "{:.2f}"),
    ("closed: SUSPECT s", "closed_suspect_s", "{:.2f}"),
    ("closed: DEAD s", "closed_dead_s", "{:.2f}"),
    ("client CPU %", "client_cpu_pct", "{:.0f}"),
    ("client late p99 ms", "late_p99_ms", "{:.1f}"),
    ("probes answered / beats sent / due", "acked", "{}"),
    ("streams failed", "lost_streams", "{:.0f}"),
    ("fenced replies", "fenced", "{:.0f}"),
    ("register s", "register_s", "{:.1f}"),
]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric figure over the runs of one agent count."""
    row: dict[str, Any] = {"runs": len(runs)}
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            row[key] = median([float(r[key]) for r in runs])
        else:
            row[key] = value
    acked, sent = median([r["beats"] for r in runs]), median([r["sent_beats"] for r in runs])
    row["acked"] = f"{acked:,.0f} / {sent:,.0f} / {runs[0]['expected_beats']:,}"
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown rows; *µs x bare* divides by the bare gRPC peer with the same agent count."""
    peers = {r["agents"]: r["us_per_beat"] for r in rows if r["server"] != "coordinator"}
    lines = [
        "| " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        peer = peers.get(row["agents"])
        row["cpu_ratio"] = row["us_per_beat"] / peer if peer else float("nan")
        cells = []
        for _, key, fmt in COLUMNS:
            value = row.get(key, float("nan"))
            cells.append(fmt.format(int(value) if fmt == "{:,}" else value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=3, help="runs per agent count (median)")
    parser.add_argument("--duration", type=float, default=20.0, help="steady window, s")
    parser.add_argument("--warmup", type=float, default=5.0, help="s before the window")
    parser.add_argument("--streams-per-channel", type=int, default=500)
    parser.add_argument(
        "--ack-every",
        type=int,
        default=10,
        help="every K-th beat of an agent asks for an answer (want_ack): the round-trip probes",
    )
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--suspect-after", type=float, default=3.0)
    parser.add_argument("--dead-after", type=float, default=10.0)
    parser.add_argument("--json", default="", help="also write the rows here")
    parser.add_argument(
        "--bare", action="store_true", help="also run the peer: a gRPC server that only acks"
    )
    parser.add_argument("--no-detect", dest="detect", action="store_false", help="internal")
    parser.add_argument("--role", choices=["bench", "client", "bare"], default="bench")
    parser.add_argument("--address", default="", help="internal: the coordinator (client role)")
    args = parser.parse_args(argv)
    if args.role == "client":
        args.agents = args.agents[0]
        return client_main(args)
    if args.role == "bare":
        return bare_main()
    bad = [n for n in args.agents if n < 3]
    if bad or args.runs < 1 or args.duration <= 0 or args.streams_per_channel < 1:
        parser.error(
            "--agents must be >= 3, --runs >= 1, --duration > 0, --streams-per-channel >= 1"
        )
    if args.ack_every < 1:
        parser.error("--ack-every must be >= 1 (1: every beat is a round-trip probe)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children too
    print(f"# load average at start: {load_average()}; cores: {os.cpu_count()}", flush=True)
    rows = []
    servers = ["coordinator", "bare gRPC"] if args.bare else ["coordinator"]
    for n in args.agents:
        for server in servers:
            runs = []
            for i in range(args.runs):
                run = run_once(n, args, bare=server != "coordinator")
                run["server"] = server
                print(f"# {server}, {n} agents, run {i + 1}: {json.dumps(run)}", flush=True)
                runs.append(run)
            rows.append(summarise(runs))
    print(f"# load average at end: {load_average()}")
    print(f"# store {args.store}; median of {args.runs} run(s); window {args.duration:.0f} s")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
