"""``infermesh-run --nnodes auto|MIN:MAX`` with a coordinator: submit, stream, report.

The command line becomes a job: the script (made absolute), its arguments, workers per
node, the node range (``auto``: 1 up to every healthy node that fits), ``--max-restarts``,
the current directory (the nodes must see the same path: a shared filesystem), and the
environment variables a training job usually depends on (:data:`FORWARDED_ENV`). The
coordinator places it; this process prints the job's log lines as the agents send them and
exits with the job's result (0 succeeded, 1 failed, 130 cancelled). Ctrl-C cancels the job;
``--detach`` prints the job id and returns at once.

Without a coordinator, ``--nnodes auto`` starts an embedded local cell (``infermesh up
--agents 1`` on loopback) for the duration of the job.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from infermesh.client.connection import Connection
from infermesh.client.coordinator import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorUnavailable,
    pb,
)
from infermesh.core.errors import InferMeshError, UsageError
from infermesh.train.launcher.options import LaunchOptions

logger = logging.getLogger(__name__)

FORWARDED_ENV = ("PYTHONPATH", "OMP_NUM_THREADS", "LOGLEVEL", "PYTHONHASHSEED")
FORWARDED_PREFIXES = ("TORCH_", "NCCL_", "GLOO_", "INFERMESH_TRAIN_")
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "CANCELLED": 130}
CELL_START_TIMEOUT_S = 60.0
RECONNECT_S = 120.0
CELL_MAX_RESTARTS = 3
"""Restarts a submitted job gets when ``--max-restarts`` is not given."""


def job_spec(opts: LaunchOptions, nproc: int) -> pb.JobSpec:
    """The job a command line describes."""
    if opts.module:
        entrypoint = f"-m {opts.training_script}"
    else:
        script = Path(opts.training_script)
        if not script.is_file():
            raise UsageError(f"training script {opts.training_script!r} not found in {os.getcwd()}")
        entrypoint = str(script.resolve())
    name = re.sub(r"[^A-Za-z0-9._-]", "-", opts.job_name or Path(opts.training_script).stem)
    env = {k: v for k, v in os.environ.items() if k in FORWARDED_ENV}
    env.update({k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)})
    launcher_args = ["--monitor-interval", str(opts.monitor_interval)]
    if opts.hang_timeout:
        launcher_args += ["--hang-timeout", str(opts.hang_timeout)]
    if opts.worker_start != "fork":
        launcher_args += ["--worker-start", opts.worker_start]
    return pb.JobSpec(
        name=name[:41].strip("-._") or "job",
        entrypoint=entrypoint,
        args=opts.training_script_args,
        nproc_per_node=nproc,
        nodes_min=opts.min_nodes,
        nodes_max=0 if opts.nnodes_auto else opts.max_nodes,
        workdir=os.getcwd(),
        env=env,
        max_restarts=opts.max_restarts if opts.max_restarts_given else CELL_MAX_RESTARTS,
        launcher_args=launcher_args,
    )


def submit(opts: LaunchOptions, nproc: int, coordinator: str, connection: Connection) -> int:
    """Submit to ``coordinator`` over ``connection``'s TLS; follow the job unless ``--detach``.

    Returns the exit code.
    """
    spec = job_spec(opts, nproc)
    with connection.client(coordinator) as client:
        client.wait_ready(10.0)
        reply = client.submit_job(spec)
        job = reply.job
        print(
            f"infermesh-run: submitted {job.job_id} to {client.address} "
            f"({spec.nproc_per_node} worker(s) per node, nodes "
            f"{spec.nodes_min}:{spec.nodes_max or 'auto'}); {job.status}",
            flush=True,
        )
        if reply.placement:
            print(reply.placement, flush=True)
        if opts.detach:
            print(job.job_id, flush=True)
            return 0
        return follow(client, job.job_id)


def follow(
    client: CoordinatorClient,
    job_id: str,
    *,
    tail: int = 0,
    cancel_on_interrupt: bool = True,
    prog: str = "infermesh-run",
    write: Callable[[pb.LogLine], None] | None = None,
    summary: TextIO | None = None,
) -> int:
    """Print the job's log lines until it ends and return its exit code (:data:`EXIT_CODES`).

    A coordinator restart does not end the job: the stream resumes after the last line shown,
    for up to :data:`RECONNECT_S` seconds of unavailability. ``tail`` > 0 starts with only
    the last ``tail`` lines kept so far. Ctrl-C cancels the job (``cancel_on_interrupt``) or
    only stops following; both return 130. ``write`` prints one line (default: its text on
    stdout); the closing summary goes to ``summary`` (stdout).
    """
    out = summary or sys.stdout
    after, down_since = 0, 0.0
    show = write or (lambda line: print(line.text, flush=True))
    try:
        while True:
            try:
                for line in client.job_logs(job_id, follow=True, after_seq=after, tail=tail):
                    show(line)
                    after = line.seq
                tail = 0
                job = client.get_job(job_id).job
                down_since = 0.0
            except CoordinatorUnavailable as error:
                now = time.monotonic()
                if not down_since:
                    down_since = now
                    print(f"{prog}: {error}; reconnecting", file=sys.stderr, flush=True)
                if now - down_since > RECONNECT_S:
                    raise
                time.sleep(1.0)
                continue
            if job.status in EXIT_CODES:
                break
    except KeyboardInterrupt:
        if cancel_on_interrupt:
            print(f"\n{prog}: cancelling {job_id}", file=sys.stderr, flush=True)
            client.cancel_job(job_id)
        else:
            print(
                f"\n{prog}: stopped following {job_id}; it goes on "
                f"(`infermesh jobs logs {job_id} -f` follows it again)",
                file=sys.stderr,
                flush=True,
            )
        return EXIT_CODES["CANCELLED"]
    took = max(0.0, job.updated_at - job.created_at)
    detail = f": {job.message}" if job.message else ""
    print(
        f"{prog}: {job.job_id} {job.status} after {took:.1f} s on "
        f"{len(job.nodes)} node(s), world size {job.world_size}, step {job.step}, "
        f"{job.restarts} restart(s){detail}",
        file=out,
        flush=True,
    )
    return EXIT_CODES[job.status]


class LocalCell:
    """``infermesh up --agents N`` in a child process, for one job's lifetime."""

    def __init__(self, state_dir: Path, agents: int = 1) -> None:
        self.state_dir = state_dir
        self.agents = agents
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ready = self.state_dir / "ready"
        ready.unlink(missing_ok=True)
        log = open(self.state_dir / "cell.log", "wb")
        exe = Path(sys.executable).with_name("infermesh")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "infermesh.cli.main"]
        self.process = subprocess.Popen(
            [
                *cmd,
                "up",
                "--agents",
                str(self.agents),
                "--port",
                "0",
                "--state-dir",
                str(self.state_dir),
                "--ready-file",
                str(ready),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + CELL_START_TIMEOUT_S
        while not ready.exists():
            if self.process.poll() is not None:
                tail = (self.state_dir / "cell.log").read_text(errors="replace")[-2000:]
                raise InferMeshError(f"the embedded local cell exited at start:\n{tail}")
            if time.monotonic() > deadline:
                self.__exit__()
                raise InferMeshError(
                    f"the embedded local cell did not start in {CELL_START_TIMEOUT_S:.0f} s; "
                    f"see {self.state_dir / 'cell.log'}"
                )
            time.sleep(0.05)
        address = ready.read_text().strip()
        print(
            f"infermesh-run: no coordinator configured; started an embedded local cell at "
            f"{address} (insecure, loopback only; state in {self.state_dir})",
            flush=True,
        )
        return address

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def submit_or_local(opts: LaunchOptions, nproc: int, coordinator: str | None) -> int:
    try:
        if coordinator:
            return submit(opts, nproc, coordinator, opts.connection)
        state = Path(opts.run_dir).absolute() / ".cell"
        with LocalCell(state) as address:  # plaintext on loopback, whatever $INFERMESH_TLS_*
            return submit(opts, nproc, address, Connection(insecure=True))
    except CoordinatorError as error:
        raise InferMeshError(str(error)) from None
