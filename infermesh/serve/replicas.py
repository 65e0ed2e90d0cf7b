"""``infermesh serve --replicas N``: N model-server processes and a router in front of them.

Each replica is ``python -m infermesh.serve.server CONFIG_JSON`` on a free port; it writes
its bound address to a ready file once it listens. The router (in this process) starts when
every replica is ready and routes over them as ``infermesh`` backends.

A replica that exits is restarted: it leaves the router's list at once (requests in flight
there are retried on the others), comes back after a backoff (``backoff_s``, doubling up to
``max_backoff_s``) on a new port, and rejoins the list once it listens. A replica that keeps
exiting -- ``max_restarts`` times in a row, each within ``stable_s`` of its start -- is given
up on (logged as an error); the others go on serving. Closing stops the router, then sends
SIGTERM to each replica (SIGKILL after ``stop_timeout_s``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infermesh.core.errors import LaunchError
from infermesh.obs import metrics
from infermesh.obs.tracing import get_tracer
from infermesh.serve._aio import run, until_signal
from infermesh.serve.router.api import BackendSpec, RouterConfig
from infermesh.serve.router.router import Router
from infermesh.serve.router.sources import StaticBackendSource
from infermesh.serve.server.api import ServerConfig, resolve_checkpoint

__all__ = ["ReplicaSet", "run_replicas"]

log = logging.getLogger(__name__)
tracer = get_tracer(__name__)

RESTARTS = metrics.counter(
    "infermesh_replica_restarts", "Model-server replicas restarted after they exited", ("model",)
)
READY = metrics.gauge(
    "infermesh_replicas_ready", "Model-server replicas listening behind the router", ("model",)
)


class ReplicaSet:
    """N server processes behind one router; ``await start()`` returns the router's port."""

    def __init__(
        self,
        server: ServerConfig,
        replicas: int,
        router: RouterConfig,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
        *,
        max_restarts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        poll_s: float = 0.2,
    ) -> None:
        if replicas < 1:
            raise LaunchError(f"--replicas must be >= 1, got {replicas}")
        if max_restarts < 0:
            raise LaunchError(f"--max-restarts must be >= 0, got {max_restarts}")
        resolve_checkpoint(server.checkpoint)  # fail before starting anything
        self.server = server
        self.replicas = replicas
        self.router_config = router
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        """Each replica's URL; "" while it is down."""
        self.restarts = [0] * replicas
        """Restarts of each replica so far."""
        self.router: Router | None = None
        self._source = StaticBackendSource([])
        self._started = [0.0] * replicas  # when each replica's process started
        self._ready_files = [Path()] * replicas
        self._keepers: list[asyncio.Task[None]] = []
        self._ready = READY.labels(model=server.model_name)
        self._tmp = tempfile.TemporaryDirectory(prefix="infermesh-replicas-")

    async def start(self) -> int:
        """Start the replicas, wait until each listens, start the router; return its port."""
        try:
            for i in range(self.replicas):
                log.info("starting replica %d", i)
                self.procs.append(self._spawn(i))
            self.urls = await asyncio.gather(*(self._wait_ready(i) for i in range(self.replicas)))
            self._publish()
            self.router = Router(self.router_config, self._source)
            port = await self.router.start()
            self._keepers = [asyncio.create_task(self._keep(i)) for i in range(self.replicas)]
            return port
        except BaseException:
            await self.close()
            raise

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        """Start replica ``i`` (a fresh ready file, so an old one is never read)."""
        ready = Path(self._tmp.name) / f"replica-{i}-{self.restarts[i]}"
        cfg = dataclasses.replace(self.server, port=0, ready_file=str(ready))
        proc = subprocess.Popen(
            [sys.executable, "-m", "infermesh.serve.server", cfg.to_json()],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._started[i], self._ready_files[i] = time.monotonic(), ready
        return proc

    async def _wait_ready(self, i: int) -> str:
        """Replica ``i``'s URL once it listens; LaunchError if it exits first or is too slow."""
        deadline = time.monotonic() + self.start_timeout_s
        proc, ready = self.procs[i], self._ready_files[i]
        while True:
            if proc.poll() is not None:
                raise LaunchError(
                    f"replica {i} exited with code {proc.returncode} before listening "
                    "(its error is printed above)"
                )
            if ready.exists():
                return f"http://{ready.read_text().strip()}"
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"replica {i} not listening after {self.start_timeout_s:g}s; is the "
                    "machine overloaded? (each replica loads torch and the checkpoint)"
                )
            await asyncio.sleep(0.05)

    def _publish(self) -> None:
        """Give the router the replicas that listen now."""
        live = [u for u in self.urls if u]
        capacity = float(self.server.max_batch)
        self._source.set([BackendSpec(url=u, kind="infermesh", capacity=capacity) for u in live])
        self._ready.set(len(live))

    async def _keep(self, i: int) -> None:
        """Restart replica ``i`` whenever it exits, until it keeps failing."""
        failures = 0
        while True:
            proc = self.procs[i]
            while proc.poll() is None:
                await asyncio.sleep(self.poll_s)
            if self.urls[i]:
                self.urls[i] = ""
                self._publish()  # out of the router now; its requests are retried elsewhere
            ran_s = time.monotonic() - self._started[i]
            failures = 1 if ran_s >= self.stable_s else failures + 1
            if failures > self.max_restarts:
                log.error(
                    "replica %d exited with code %s, %d time(s) in a row within %gs of its "
                    "start; not restarting it (%d of %d replicas serve)",
                    i,
                    proc.returncode,
                    failures,
                    self.stable_s,
                    sum(1 for u in self.urls if u),
                    self.replicas,
                )
                return
            delay = min(self.backoff_s * 2 ** (failures - 1), self.max_backoff_s)
            log.warning(
                "replica %d exited with code %s after %.1fs; restarting it in %.1fs",
                i,
                proc.returncode,
                ran_s,
                delay,
            )
            await asyncio.sleep(delay)
            with tracer.start_as_current_span("replica.restart") as span:
                span.set_attribute("model", self.server.model_name)
                span.set_attribute("replica", i)
                self.restarts[i] += 1
                RESTARTS.labels(model=self.server.model_name).inc()
                self.procs[i] = self._spawn(i)
                try:
                    self.urls[i] = await self._wait_ready(i)
                except LaunchError as error:
                    log.warning("%s", error)
                    _stop(self.procs[i])
                    continue
            log.info("replica %d is back on %s", i, self.urls[i])
            self._publish()

    async def close(self) -> None:
        """Stop the supervision, the router and every replica."""
        for task in self._keepers:
            task.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        self._keepers = []
        if self.router is not None:
            await self.router.close()
            self.router = None
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for p in self.procs:
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            _stop(p)
        self._ready.set(0)
        self._tmp.cleanup()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


async def _serve_forever(rs: ReplicaSet) -> None:
    port = await rs.start()
    cfg = rs.router_config
    print(
        f"infermesh serve: {rs.replicas} replicas of {rs.server.model_name} "
        f"({', '.join(rs.urls)}) behind the router on http://{cfg.host}:{port} "
        f"(strategy {cfg.strategy})",
        flush=True,
    )
    try:
        await until_signal()
    finally:
        await rs.close()


def run_replicas(
    server: ServerConfig, replicas: int, router: RouterConfig, max_restarts: int = 5
) -> None:
    """Serve ``replicas`` copies of the checkpoint behind a router until SIGINT/SIGTERM."""
    run(_serve_forever(ReplicaSet(server, replicas, router, max_restarts=max_restarts)))
