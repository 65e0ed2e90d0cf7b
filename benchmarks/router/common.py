"""Shared parts of the router benchmarks: processes, an open-loop load generator, stats.

Every server runs as its own process (fake backends, our router, sglang-router,
vllm-router); the load generator runs in the benchmark's process on uvloop. Peers come from
the benchmark's own environment (``benchmarks/router/.venv``, see README.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from infermesh.core.net import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PEER_BIN = HERE / ".venv" / "bin"
PY = sys.executable


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200 (bounded)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not up after {timeout}s")


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to put started processes in; all are stopped (TERM, then KILL) on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_fakes(procs: list[subprocess.Popen[bytes]], configs: list[dict[str, Any]]) -> list[str]:
    """Start fake backends (``FakeBackendConfig`` fields); return their URLs."""
    urls = []
    for cfg in configs:
        port = free_port()
        args = [PY, "-m", "infermesh.serve.fake_backend", "--port", str(port)]
        for k, v in cfg.items():
            flag = "--" + (k[:-2] if k.endswith("_s") else k).replace("_", "-")
            args += [flag, str(v)]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, cwd=REPO))
        urls.append(f"http://127.0.0.1:{port}")
    for u, p in zip(urls, procs[-len(urls) :], strict=True):
        wait_http(u + "/health", proc=p)
    return urls


def start_router(
    procs: list[subprocess.Popen[bytes]],
    kind: str,
    urls: list[str],
    policy: str,
    extra: Sequence[str] = (),
) -> str:
    """Start ``ours`` / ``sglang`` / ``vllm`` router over ``urls``; return its base URL."""
    port = free_port()
    if kind == "ours":
        args = [
            PY, "-m", "infermesh.cli.serve", "router", "start", "--backends", ",".join(urls),
            "--strategy", policy, "--port", str(port), *extra,
        ]  # fmt: skip
        health = "/health"
    elif kind == "sglang":
        args = [
            str(PEER_BIN / "sglang-router"), "launch", "--worker-urls", *urls, "--policy", policy,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
            "--prometheus-port", str(free_port()), *extra,
        ]  # fmt: skip
        health = "/health"
    elif kind == "vllm":
        args = [
            str(PEER_BIN / "vllm-router"), "--worker-urls", *urls, "--policy", policy,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
            "--prometheus-port", str(free_port()), *extra,
        ]  # fmt: skip
        health = "/health"
    else:
        raise ValueError(kind)
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    procs.append(p)
    wait_http(f"http://127.0.0.1:{port}{health}", timeout=60, proc=p)
    return f"http://127.0.0.1:{port}"


def stop(procs: list[subprocess.Popen[bytes]], p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    procs.remove(p)


@dataclass
class Result:
    """Latencies (s) of one load run; ``ttft`` for streamed requests."""

    offered_rps: float
    latencies: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0

    def pct(self, q: float, what: str = "latencies") -> float:
        data = getattr(self, what)
        return float(np.percentile(data, q)) if data else float("nan")

    @property
    def achieved_rps(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0


async def load(
    targets: list[str],
    rate: float,
    count: int,
    body: Callable[[int], dict[str, Any]],
    max_s: float = 60.0,
    stream: bool = False,
    path: str = "/v1/completions",
) -> Result:
    """Open-loop load: request ``i`` leaves at ``i / rate`` (to ``targets[i % len]``)."""
    res = Result(offered_rps=rate)
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=max_s)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + max_s

        async def one(i: int) -> None:
            b = body(i)
            if stream:
                b["stream"] = True
            data = json.dumps(b).encode()
            start = time.perf_counter()
            try:
                async with s.post(
                    targets[i % len(targets)] + path,
                    data=data,
                    headers={"Content-Type": "application/json"},
                ) as r:
                    if r.status != 200:
                        res.errors += 1
                        await r.read()
                        return
                    first = None
                    async for _chunk in r.content.iter_any():
                        if first is None:
                            first = time.perf_counter()
                    end = time.perf_counter()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                res.errors += 1
                return
            res.latencies.append(end - start)
            if stream and first is not None:
                res.ttft.append(first - start)

        tasks = []
        for i in range(count):
            due = t0 + i / rate
            now = loop.time()
            if now > deadline:
                break
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        res.wall_s = loop.time() - t0
    return res


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def env_with_repo() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def write_json(name: str, data: Any) -> Path:
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    path = out / name
    path.write_text(json.dumps(data, indent=2))
    return path
