"""The per-node agent of ``infermesh-run``: torch elastic's local agent, with three changes.

1. Workers are forked from the pre-imported template (``--worker-start fork``) through
   :class:`~infermesh.train.launcher.workers.ForkedContext`, or started as new interpreters
   exactly like torchrun (``exec``).
2. Hang detection: with ``--hang-timeout``, a worker group in which some worker has not
   called :func:`infermesh.train.heartbeat` for that long is treated as FAILED (its stacks
   are dumped to its stderr log first, in fork mode) and restarted like any failure.
3. Every failure of every attempt is recorded as a :class:`FailureRecord` (rank, node,
   exit code or signal, the first traceback), so the launcher can name the root cause.

The lifecycle is torch elastic's (``WorkerState``): INIT -> HEALTHY -> SUCCEEDED, or
HEALTHY -> FAILED/UNHEALTHY -> (restart: STOPPED -> rendezvous -> HEALTHY) until
``--max-restarts`` is used up. A node joining the rendezvous also restarts the group (not
counted as a restart).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from pathlib import Path
from string import Template
from typing import Any

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import LogsSpecs, ProcessFailure, start_processes
from torch.distributed.elastic.utils import macros

from infermesh.obs import metrics
from infermesh.obs.tracing import get_tracer
from infermesh.train.heartbeat import HEARTBEAT_ENV
from infermesh.train.launcher.logs import FailureRecord, describe_exit, first_traceback
from infermesh.train.launcher.workers import ForkedContext
from infermesh.train.launcher.zygote import Zygote, write_error_file

logger = logging.getLogger(__name__)
tracer = get_tracer(__name__)

__all__ = ["MeshAgent"]

_RESTARTS = metrics.counter(
    "infermesh_launcher_restarts", "Worker group restarts after a failure or hang.", ("job", "node")
)
_FAILURES = metrics.counter(
    "infermesh_launcher_worker_failures",
    "Worker failures (exits, signals, hangs) by rank.",
    ("job", "node", "rank"),
)
_HANGS = metrics.counter(
    "infermesh_launcher_hangs",
    "Worker groups failed for a missing progress heartbeat.",
    ("job", "node"),
)
_WORKERS = metrics.gauge(
    "infermesh_launcher_workers", "Workers of this node currently running.", ("job", "node")
)
_HEARTBEAT_AGE = metrics.gauge(
    "infermesh_launcher_heartbeat_age_seconds",
    "Seconds since the worker's last progress heartbeat (or its start).",
    ("job", "node", "rank"),
)
_RDZV_SECONDS = metrics.histogram(
    "infermesh_launcher_rendezvous_seconds",
    "Duration of rendezvous rounds.",
    ("job", "node"),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
_START_SECONDS = metrics.histogram(
    "infermesh_launcher_worker_start_seconds",
    "Time to start the local worker group (fork or exec).",
    ("job", "node"),
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class MeshAgent(LocalElasticAgent):
    """torch elastic ``LocalElasticAgent`` with forked workers, hang detection and history."""

    def __init__(
        self,
        spec: Any,
        logs_specs: LogsSpecs,
        *,
        node: str,
        state_dir: Path,
        zygote: Zygote | None,
        module: bool,
        hang_timeout: float | None,
        start_method: str = "spawn",
        log_line_prefix_template: str | None = None,
        shutdown_timeout: int | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {}
        if shutdown_timeout is not None:
            kwargs["shutdown_timeout"] = shutdown_timeout
        super().__init__(
            spec=spec,
            logs_specs=logs_specs,
            start_method=start_method,  # type: ignore[arg-type]
            log_line_prefix_template=log_line_prefix_template,
            **kwargs,
        )
        self.node = node
        self.failures: list[FailureRecord] = []
        self.attempts = 0
        self._state_dir = state_dir
        self._zygote = zygote
        self._module = module
        self._hang_timeout = hang_timeout
        self._heartbeats: dict[int, str] = {}
        self._started_at = 0.0

    @property
    def _labels(self) -> dict[str, str]:
        return {"job": self._worker_group.spec.rdzv_handler.get_run_id(), "node": self.node}

    # -- rendezvous and restarts ------------------------------------------------------
    def _rendezvous(self, worker_group: WorkerGroup) -> None:
        t0 = time.perf_counter()
        with tracer.start_as_current_span("rendezvous") as span:
            span.set_attributes(
                {**self._labels, "backend": worker_group.spec.rdzv_handler.get_backend()}
            )
            super()._rendezvous(worker_group)
            span.set_attributes(
                {
                    "group_rank": worker_group.group_rank or 0,
                    "group_world_size": worker_group.group_world_size or 0,
                    "world_size": worker_group.workers[0].world_size if worker_group.workers else 0,
                }
            )
        _RDZV_SECONDS.labels(**self._labels).observe(time.perf_counter() - t0)

    def _restart_workers(self, worker_group: WorkerGroup) -> None:
        with tracer.start_as_current_span("restart_workers") as span:
            span.set_attributes({**self._labels, "reason": worker_group.state.name})
            if worker_group.state in (WorkerState.FAILED, WorkerState.UNHEALTHY):
                _RESTARTS.labels(**self._labels).inc()
            super()._restart_workers(worker_group)

    def _stop_workers(self, worker_group: WorkerGroup) -> None:
        super()._stop_workers(worker_group)
        _WORKERS.labels(**self._labels).set(0)

    # -- starting ---------------------------------------------------------------------
    def _start_workers(self, worker_group: WorkerGroup) -> dict[int, Any]:
        t0 = time.perf_counter()
        with tracer.start_as_current_span("start_workers") as span:
            span.set_attributes(
                {
                    **self._labels,
                    "local_world_size": len(worker_group.workers),
                    "worker_start": "fork" if self._zygote else "exec",
                }
            )
            pids = self._start_workers_now(worker_group)
        _START_SECONDS.labels(**self._labels).observe(time.perf_counter() - t0)
        _WORKERS.labels(**self._labels).set(len(pids))
        return pids

    def _start_workers_now(self, worker_group: WorkerGroup) -> dict[int, Any]:
        spec = worker_group.spec
        attempt = self.restarts
        hb_dir = self._state_dir / "heartbeats" / f"attempt_{attempt}"
        hb_dir.mkdir(parents=True, exist_ok=True)
        use_agent_store = spec.rdzv_handler.use_agent_store
        envs: dict[int, dict[str, str]] = {}
        args: dict[int, tuple] = {}
        prefixes: dict[int, str] | None = {} if self._log_line_prefix_template else None
        self._heartbeats = {}
        for w in worker_group.workers:
            env: dict[str, Any] = {
                "RANK": str(w.global_rank),
                "GROUP_RANK": str(worker_group.group_rank),
                "ROLE_RANK": str(w.role_rank),
                "ROLE_NAME": spec.role,
                "LOCAL_WORLD_SIZE": str(spec.local_world_size),
                "WORLD_SIZE": str(w.world_size),
                "GROUP_WORLD_SIZE": str(worker_group.group_world_size),
                "ROLE_WORLD_SIZE": str(w.role_world_size),
                "MASTER_ADDR": worker_group.master_addr,
                "MASTER_PORT": str(worker_group.master_port),
                "TORCHELASTIC_RESTART_COUNT": str(attempt),
                "TORCHELASTIC_MAX_RESTARTS": str(spec.max_restarts),
                "TORCHELASTIC_RUN_ID": spec.rdzv_handler.get_run_id(),
                "TORCHELASTIC_USE_AGENT_STORE": str(use_agent_store),
                "TORCH_NCCL_ASYNC_ERROR_HANDLING": os.getenv(
                    "TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"
                ),
            }
            self._set_local_rank_env(env, w.local_rank, spec)
            if "OMP_NUM_THREADS" in os.environ:
                env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
            hb = str(hb_dir / f"rank_{w.global_rank}")
            env[HEARTBEAT_ENV] = hb
            self._heartbeats[w.local_rank] = hb
            envs[w.local_rank] = env
            args[w.local_rank] = tuple(macros.substitute(list(spec.args), str(w.local_rank)))
            if prefixes is not None and self._log_line_prefix_template:
                prefixes[w.local_rank] = Template(self._log_line_prefix_template).safe_substitute(
                    role_name=spec.role, rank=w.global_rank, local_rank=w.local_rank
                )
        self._setup_local_watchdog(envs=envs)
        self._setup_healthcheck()

        if self._zygote is not None:
            ctx = ForkedContext(
                self._zygote,
                name=spec.role,
                script=str(spec.entrypoint),
                module=self._module,
                args=args,
                envs=envs,
                logs_specs=self._logs_specs,
                log_line_prefixes=prefixes,
                duplicate_stdout_filters=spec.duplicate_stdout_filters,
                duplicate_stderr_filters=spec.duplicate_stderr_filters,
            )
            try:
                ctx.start()
            except Exception:
                ctx.close()
                raise
            self._pcontext = ctx
        else:
            self._pcontext = start_processes(
                name=spec.role,
                entrypoint=spec.entrypoint,  # type: ignore[arg-type]
                args=args,
                envs=envs,
                logs_specs=self._logs_specs,
                log_line_prefixes=prefixes,
                start_method=self._start_method,
                numa_options=spec.numa_options,
                duplicate_stdout_filters=spec.duplicate_stdout_filters,
                duplicate_stderr_filters=spec.duplicate_stderr_filters,
            )
        self._started_at = time.time()
        self.attempts += 1
        return self._pcontext.pids()

    # -- monitoring -------------------------------------------------------------------
    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        result = super()._monitor_workers(worker_group)
        if result.state == WorkerState.HEALTHY:
            ages = self._heartbeat_ages(worker_group)
            limit = self._hang_timeout
            hung = {lr: age for lr, age in ages.items() if limit and age > limit}
            if hung:
                _HANGS.labels(**self._labels).inc()
                result = self._fail_hung(worker_group, hung)
        if result.state == WorkerState.FAILED:
            self._record_failures(worker_group, result)
        return result

    def _heartbeat_ages(self, worker_group: WorkerGroup) -> dict[int, float]:
        """local rank -> seconds since its last heartbeat (or since it started)."""
        now = time.time()
        ages: dict[int, float] = {}
        for w in worker_group.workers:
            path = self._heartbeats.get(w.local_rank)
            try:
                last = max(os.stat(path).st_mtime, self._started_at) if path else self._started_at
            except FileNotFoundError:
                last = self._started_at
            ages[w.local_rank] = now - last
            _HEARTBEAT_AGE.labels(**self._labels, rank=str(w.global_rank)).set(now - last)
        return ages

    def _fail_hung(self, worker_group: WorkerGroup, hung: dict[int, float]) -> RunResult:
        assert self._pcontext is not None
        pids = self._pcontext.pids()
        if self._zygote is not None:
            self._dump_stacks([pids[lr] for lr in hung])
        failures: dict[int, ProcessFailure] = {}
        for lr, age in hung.items():
            w = worker_group.workers[lr]
            error_file = self._pcontext.error_files.get(lr, "")
            stack = ""
            stderr = self._pcontext.stderrs.get(lr, "")
            if stderr and os.path.exists(stderr):
                text = Path(stderr).read_text(errors="replace")
                dump = re.search(r"(?m)^(Current thread|Thread) 0x", text)
                stack = text[dump.start() :] if dump else ""
            message = (
                f"hung: no progress heartbeat for {age:.1f} s "
                f"(--hang-timeout {self._hang_timeout:g})"
            )
            write_error_file(
                error_file, message, stack or "(no stack dump; run with --worker-start fork)"
            )
            logger.error("rank %s (local %s) on node %s %s", w.global_rank, lr, self.node, message)
            failures[w.global_rank] = ProcessFailure(
                local_rank=lr, pid=pids[lr], exitcode=-int(signal.SIGTERM), error_file=error_file
            )
        return RunResult(state=WorkerState.FAILED, failures=failures)

    def _dump_stacks(self, pids: list[int]) -> None:
        """Ask forked workers for a stack dump (faulthandler on SIGUSR1) and let it land."""
        for pid in pids:
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
        # faulthandler writes from the signal handler; give it a moment, bounded.
        deadline = time.monotonic() + 1.0
        while not all(_stack_written(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)  # the handler itself writes within microseconds of delivery

    def _record_failures(self, worker_group: WorkerGroup, result: RunResult) -> None:
        ctx = self._pcontext
        for global_rank, f in result.failures.items():
            _FAILURES.labels(**self._labels, rank=str(global_rank)).inc()
            lr = f.local_rank
            stderr = ctx.stderrs.get(lr, "") if ctx is not None else ""
            error_file = ctx.error_files.get(lr, "") if ctx is not None else f.error_file
            message, tb = first_traceback(error_file, stderr)
            if not message and f.message and not f.message.startswith("To enable"):
                message = str(f.message).splitlines()[0]
            when = ctx.exit_time(lr) if isinstance(ctx, ForkedContext) else None
            reason = describe_exit(f.exitcode)
            if message.startswith("hung:"):
                reason, message = message, ""
            self.failures.append(
                FailureRecord(
                    attempt=self.restarts,
                    rank=global_rank,
                    local_rank=lr,
                    node=self.node,
                    pid=f.pid,
                    exitcode=f.exitcode,
                    reason=reason,
                    message=message,
                    traceback=tb,
                    time=when or float(f.timestamp),
                    log_dir=os.path.dirname(error_file) if error_file else "",
                )
            )
        for rec in self._attempt_failures(self.restarts):
            logger.warning("worker failed: %s", rec.headline())

    @property
    def restarts(self) -> int:
        """Restarts spent on failures and hangs (membership changes are free); it is also the
        attempt number of the running workers (TORCHELASTIC_RESTART_COUNT)."""
        return self._worker_group.spec.max_restarts - self._remaining_restarts

    def _attempt_failures(self, attempt: int) -> list[FailureRecord]:
        return sorted((r for r in self.failures if r.attempt == attempt), key=lambda r: r.time)

    def root_cause(self) -> FailureRecord | None:
        """The first failure (by time) of the last failed attempt."""
        if not self.failures:
            return None
        return self._attempt_failures(self.failures[-1].attempt)[0]


def _stack_written(pid: int) -> bool:
    """True once the process is no longer running its SIGUSR1 handler (best effort)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                pending = line.startswith(("SigPnd", "ShdPnd")) and int(line.split()[1], 16)
                if pending and pending & (1 << (signal.SIGUSR1 - 1)):
                    return False
    except OSError:
        return True
    return True
