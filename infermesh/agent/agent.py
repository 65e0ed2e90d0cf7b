"""The node agent: registers with the coordinator, heartbeats, and runs assigned jobs.

One agent per node (several per machine in tests, each with its own ``--node-id`` and work
directory). It keeps one bidirectional gRPC stream open to the coordinator: every
``heartbeat_interval_s`` it sends a heartbeat carrying a telemetry batch, the state and
latest step of each job it runs, and the log lines those jobs printed; the replies carry new
assignments and stop orders.

An assigned job runs as one ``infermesh-run`` process per node, with the ``infermesh``
rendezvous backend pointed at the coordinator, which decides membership and rank order.
That launcher dies with the agent (it sets ``PR_SET_PDEATHSIG`` when it finds
``INFERMESH_PARENT_PID``), and its worker template kills the
workers when the launcher dies, so killing an agent takes the node's share of a job down with
it, as losing the machine would.

The agent survives coordinator restarts: it reconnects with backoff and re-registers with
its epoch, so running jobs continue untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from infermesh.agent.telemetry import Telemetry
from infermesh.client.coordinator import async_stub
from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.core.errors import UsageError
from infermesh.core.net import host_address
from infermesh.security.tls import CLIENT_ENV, ClientTls, client_env
from infermesh.signal.collective import IPC_ENV
from infermesh.train.plan_file import PLAN_FILE_ENV, CellPlan, write_plan

logger = logging.getLogger(__name__)

LINE_RE = re.compile(r"^\[[^\]\s]+ r(\d+) l\d+\]: ?(.*)$")
MAX_BUFFERED_LINES = 20_000
STOP_GRACE_S = 15.0
FINAL_REPORTS = 5


def launcher_command() -> list[str]:
    exe = Path(sys.executable).with_name("infermesh-run")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "infermesh.train.launcher.main"]


@dataclass
class JobRun:
    """One job's launcher process on this node."""

    assignment: pb.Assignment
    run_dir: Path
    process: asyncio.subprocess.Process | None = None
    state: str = "running"
    exit_code: int = 0
    message: str = ""
    stop_requested: bool = False
    final_reports: int = 0
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def job_id(self) -> str:
        return self.assignment.job_id

    def latest_step(self) -> tuple[int, float]:
        """Highest step any worker of the newest attempt wrote in its heartbeat file."""
        attempts = sorted(
            self.run_dir.glob(f"{self.job_id}/*/heartbeats/attempt_*"),
            key=lambda p: int(p.name.split("_")[1]),
        )
        if not attempts:
            return -1, 0.0
        best, ts = -1, 0.0
        for path in attempts[-1].iterdir():
            try:
                fields = path.read_text().split()
                step, when = int(fields[0]), float(fields[1])
            except (OSError, ValueError, IndexError):
                continue
            if step > best:
                best, ts = step, when
        return best, ts

    def report(self) -> pb.JobReport:
        step, ts = self.latest_step()
        return pb.JobReport(
            job_id=self.job_id,
            state=self.state,
            exit_code=self.exit_code,
            message=self.message,
            step=step,
            step_ts=ts,
        )


class NodeAgent:
    def __init__(
        self,
        *,
        coordinator: str,
        node_id: str | None = None,
        cell: str = "local",
        workdir: str | Path = "agent-work",
        slots: int | None = None,
        rack: str = "",
        labels: dict[str, str] | None = None,
        addr: str | None = None,
        telemetry: Telemetry | None = None,
        endpoints: list[pb.ServingEndpoint] | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.tls = tls
        self.node_id = node_id or socket.gethostname()
        self.cell = cell
        self.workdir = Path(workdir).resolve()
        self.rack = rack
        self.labels = dict(labels or {})
        self.addr = addr or host_address()
        self.telemetry = telemetry
        self.endpoints = list(endpoints or [])
        self.epoch = 0
        self.interval_s = 1.0
        self.slots = slots
        self.jobs: dict[str, JobRun] = {}
        self.logs: deque[pb.LogLine] = deque(maxlen=MAX_BUFFERED_LINES)
        self.dropped_lines = 0
        self.seq = 0
        self.registered = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._followers: set[asyncio.Task[None]] = set()

    # -- identity ----------------------------------------------------------------------------
    def spec(self) -> pb.NodeSpec:
        gpus, no_gpu = self.telemetry.inventory() if self.telemetry else ([], "no collectors")
        cpus = os.cpu_count() or 1
        slots = self.slots if self.slots is not None else (len(gpus) or cpus)
        return pb.NodeSpec(
            node_id=self.node_id,
            hostname=socket.gethostname(),
            cell=self.cell,
            rack=self.rack,
            labels=self.labels,
            gpus=gpus,
            no_gpu_reason=no_gpu,
            cpus=cpus,
            memory_bytes=psutil.virtual_memory().total,
            addresses=[self.addr],
            slots=slots,
        )

    # -- main loop -------------------------------------------------------------------------
    async def run(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        backoff = 0.2
        channel, stub = async_stub(self.coordinator, tls=self.tls)
        try:
            while not self._stop.is_set():
                if self.tls is not None and self.tls.changed():  # rotated: new handshake
                    logger.info("TLS files changed; reconnecting with the new certificate")
                    await channel.close()
                    channel, stub = async_stub(self.coordinator, tls=self.tls)
                try:
                    reply = await stub.Register(
                        pb.RegisterRequest(spec=self.spec(), epoch=self.epoch), timeout=10
                    )
                    if reply.epoch != self.epoch and self.epoch:
                        logger.warning("new epoch %d (was %d)", reply.epoch, self.epoch)
                    self.epoch, self.interval_s = reply.epoch, reply.heartbeat_interval_s or 1.0
                    logger.info(
                        "node %s registered with %s (epoch %d)",
                        self.node_id,
                        self.coordinator,
                        self.epoch,
                    )
                    self.registered.set()
                    backoff = 0.2
                    await self._stream(stub)
                except grpc.aio.AioRpcError as error:
                    if error.code() in (
                        grpc.StatusCode.ALREADY_EXISTS,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        grpc.StatusCode.PERMISSION_DENIED,
                    ):
                        raise UsageError(
                            f"coordinator refused node {self.node_id}: {error.details()}"
                        ) from None
                    logger.warning(
                        "coordinator %s: %s (%s); retrying in %.1f s",
                        self.coordinator,
                        error.code().name,
                        error.details(),
                        backoff,
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, 2.0)
        finally:
            await self.stop_all()
            await channel.close()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def _stream(self, stub: object) -> None:
        fenced = asyncio.Event()
        call = stub.Heartbeat(self._beats(fenced))  # type: ignore[attr-defined]
        async for message in call:
            if message.fenced:
                logger.warning("fenced by the coordinator: %s", message.fenced)
                fenced.set()
                self._wake.set()
                break
            for assignment in message.assign:
                await self._start(assignment)
            for job_id in message.stop_jobs:
                await self._stop_job(job_id)
            for plan in message.plans:
                self._hand_plan(plan)
        call.cancel()

    async def _beats(self, fenced: asyncio.Event) -> AsyncIterator[pb.AgentHeartbeat]:
        while not self._stop.is_set() and not fenced.is_set():
            self.seq += 1
            beat = pb.AgentHeartbeat(
                node_id=self.node_id,
                epoch=self.epoch,
                seq=self.seq,
                sent_at=time.time(),
                endpoints=self.endpoints,
            )
            if self.telemetry is not None:
                # collectors may block (HTTP scrapes of model servers): keep the loop free
                batch = await asyncio.to_thread(self.telemetry.collect, time.time())
                beat.telemetry.CopyFrom(batch)
            for run in list(self.jobs.values()):
                beat.jobs.append(run.report())
                if run.state != "running":
                    run.final_reports += 1
                    if run.final_reports >= FINAL_REPORTS:
                        del self.jobs[run.job_id]
            while self.logs:
                beat.logs.append(self.logs.popleft())
            yield beat
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)

    # -- jobs ------------------------------------------------------------------------------
    async def _start(self, assignment: pb.Assignment) -> None:
        current = self.jobs.get(assignment.job_id)
        if current is not None and current.state == "running":
            return
        spec = assignment.spec
        run = JobRun(assignment=assignment, run_dir=self.workdir / "runs")
        _set_aside(run.run_dir / assignment.job_id)
        nmax = spec.nodes_max or 1024
        cmd = [
            *launcher_command(),
            "--nnodes",
            f"{spec.nodes_min}:{nmax}",
            "--nproc-per-node",
            str(spec.nproc_per_node),
            "--rdzv-backend",
            "infermesh",
            "--rdzv-endpoint",
            assignment.rdzv_endpoint or self.coordinator,
            "--rdzv-id",
            assignment.job_id,
            "--max-restarts",
            str(spec.max_restarts),
            "--run-dir",
            str(run.run_dir),
            "--local-addr",
            self.addr,
            *spec.launcher_args,
            *_entrypoint(spec.entrypoint),
            *spec.args,
        ]
        env = dict(os.environ)
        env.update(spec.env)
        plan_path = self._plan_path(assignment.job_id)
        plan_path.unlink(missing_ok=True)  # a plan of an earlier run of this id
        env[PLAN_FILE_ENV] = str(plan_path)
        if self.telemetry is not None and self.telemetry.collective_endpoint:
            env[IPC_ENV] = self.telemetry.collective_endpoint
        env.update(
            INFERMESH_NODE_ID=self.node_id,
            INFERMESH_COORDINATOR=self.coordinator,
            INFERMESH_PARENT_PID=str(os.getpid()),
        )
        for name in CLIENT_ENV:  # the launcher's rendezvous reaches the coordinator as we do
            env.pop(name, None)
        env.update(client_env(self.tls))
        env.setdefault("PYTHONUNBUFFERED", "1")
        cwd = spec.workdir or str(self.workdir)
        logger.info("starting job %s: %s", assignment.job_id, " ".join(cmd))
        try:
            run.process = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as error:
            run.state, run.exit_code = "failed", 127
            run.message = f"cannot start the launcher in {cwd}: {error}"
            self.jobs[run.job_id] = run
            return
        self.jobs[run.job_id] = run
        self._followers.add(task := asyncio.create_task(self._follow(run)))
        task.add_done_callback(self._followers.discard)

    def _plan_path(self, job_id: str) -> Path:
        return self.workdir / "plans" / f"{job_id}.json"

    def _hand_plan(self, plan: pb.CollectivePlan) -> None:
        """Give the coordinator's collective plan to the job's workers (rank 0 reads it)."""
        path = self._plan_path(plan.job_id)
        try:
            write_plan(
                path,
                CellPlan(
                    plan.version,
                    plan.algorithm,
                    plan.compression,
                    plan.fusion_bytes,
                    plan.predicted_s,
                    plan.reason,
                ),
            )
        except OSError as error:
            logger.warning(
                "cannot write the collective plan of %s to %s: %s", plan.job_id, path, error
            )
            return
        logger.info(
            "job %s: collective plan v%d %s/%s from the coordinator",
            plan.job_id,
            plan.version,
            plan.algorithm,
            plan.compression,
        )

    async def _follow(self, run: JobRun) -> None:
        assert run.process is not None and run.process.stdout is not None
        async for raw in run.process.stdout:
            text = raw.decode(errors="replace").rstrip("\n")
            match = LINE_RE.match(text)
            rank = int(match.group(1)) if match else -1
            run.last_lines.append(text)
            if len(self.logs) == self.logs.maxlen:
                self.dropped_lines += 1
            self.logs.append(
                pb.LogLine(
                    job_id=run.job_id, node_id=self.node_id, rank=rank, text=text, ts=time.time()
                )
            )
        code = await run.process.wait()
        run.exit_code = code
        if code == 0:
            run.state = "succeeded"
        elif run.stop_requested:
            run.state = "stopped"
        else:
            run.state = "failed"
            run.message = _last_result(run.last_lines) or f"launcher exited with {code}"
        logger.info(
            "job %s finished on %s: %s (exit %d)", run.job_id, self.node_id, run.state, code
        )
        self._wake.set()

    async def _stop_job(self, job_id: str) -> None:
        run = self.jobs.get(job_id)
        if run is None or run.process is None or run.process.returncode is not None:
            return
        run.stop_requested = True
        logger.info("stopping job %s on %s", job_id, self.node_id)
        with contextlib.suppress(ProcessLookupError):
            run.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(run.process.wait(), timeout=STOP_GRACE_S)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                run.process.kill()

    async def stop_all(self) -> None:
        await asyncio.gather(*(self._stop_job(j) for j in list(self.jobs)))


def _set_aside(path: Path) -> None:
    """Move an older run directory with the same job id (another cell's) out of the way."""
    if path.exists():
        path.rename(path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"))


def _entrypoint(entrypoint: str) -> list[str]:
    return ["-m", entrypoint[3:].strip()] if entrypoint.startswith("-m ") else [entrypoint]


def _last_result(lines: deque[str]) -> str:
    for line in reversed(lines):
        if "infermesh-run:" in line or "Error" in line:
            return line.strip()
    return lines[-1].strip() if lines else ""
