"""``infermesh serve --replicas N``: N model-server processes and a router in front of them.

Each replica is ``python -m infermesh.serve.server CONFIG_JSON`` on a free port; it writes
its bound address to a ready file once it listens. The router (in this process) starts when
every replica is ready and routes over them as ``infermesh`` backends. Closing stops the
router, then sends SIGTERM to each replica (SIGKILL after ``stop_timeout_s``).
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
from infermesh.serve._aio import run, until_signal
from infermesh.serve.router.api import BackendSpec, RouterConfig
from infermesh.serve.router.router import Router
from infermesh.serve.router.sources import StaticBackendSource
from infermesh.serve.server.api import ServerConfig, resolve_checkpoint

__all__ = ["ReplicaSet", "run_replicas"]

log = logging.getLogger(__name__)


class ReplicaSet:
    """N server processes behind one router; ``await start()`` returns the router's port."""

    def __init__(
        self,
        server: ServerConfig,
        replicas: int,
        router: RouterConfig,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        if replicas < 1:
            raise LaunchError(f"--replicas must be >= 1, got {replicas}")
        resolve_checkpoint(server.checkpoint)  # fail before starting anything
        self.server = server
        self.replicas = replicas
        self.router_config = router
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.router: Router | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="infermesh-replicas-")

    async def start(self) -> int:
        """Start the replicas, wait until each listens, start the router; return its port."""
        ready = [Path(self._tmp.name) / f"replica-{i}" for i in range(self.replicas)]
        try:
            for i, path in enumerate(ready):
                cfg = dataclasses.replace(self.server, port=0, ready_file=str(path))
                log.info("starting replica %d", i)
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "infermesh.serve.server", cfg.to_json()],
                        stdout=subprocess.DEVNULL,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )
            self.urls = await self._wait_ready(ready)
            specs = [
                BackendSpec(url=u, kind="infermesh", capacity=float(self.server.max_batch))
                for u in self.urls
            ]
            self.router = Router(self.router_config, StaticBackendSource(specs))
            return await self.router.start()
        except BaseException:
            await self.close()
            raise

    async def _wait_ready(self, ready: list[Path]) -> list[str]:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise LaunchError(
                        f"replica {i} exited with code {p.returncode} before listening "
                        "(its error is printed above)"
                    )
            if all(r.exists() for r in ready):
                return [f"http://{r.read_text().strip()}" for r in ready]
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"replicas not listening after {self.start_timeout_s:g}s; is the machine "
                    "overloaded? (each replica loads torch and the checkpoint)"
                )
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stop the router and every replica."""
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
            if p.poll() is None:
                p.kill()
                p.wait()
        self._tmp.cleanup()


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


def run_replicas(server: ServerConfig, replicas: int, router: RouterConfig) -> None:
    """Serve ``replicas`` copies of the checkpoint behind a router until SIGINT/SIGTERM."""
    run(_serve_forever(ReplicaSet(server, replicas, router)))
