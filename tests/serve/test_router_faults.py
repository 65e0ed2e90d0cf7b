"""Fault tests: a backend process is killed while the router is under load."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from infermesh.serve.router import BackendSpec, Router, RouterConfig, StaticBackendSource
from tests.serve._util import post, run, sse_events


def start_fake(tmp: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    ready = tmp / name
    proc = subprocess.Popen(
        [sys.executable, "-m", "infermesh.serve.fake_backend", "--ready-file", str(ready), *args]
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None, "fake backend exited"
        assert time.monotonic() < deadline, "fake backend did not start"
        time.sleep(0.02)
    return proc, "http://" + ready.read_text().strip()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["round_robin", "power_of_two", "hybrid"])
def test_killing_a_backend_under_load_fails_no_client_request(
    tmp_path: Path, strategy: str
) -> None:
    procs = [
        start_fake(tmp_path, f"b{i}", "--ttft", "0.005", "--per-token", "0.001") for i in range(3)
    ]
    specs = [BackendSpec(url=u) for _, u in procs]

    async def body() -> None:
        cfg = RouterConfig(port=0, strategy=strategy, scrape_interval_s=0.1)
        router = Router(cfg, StaticBackendSource(specs))
        port = await router.start()
        url = f"http://127.0.0.1:{port}/v1/completions"
        total, concurrency, kill_at = 400, 16, 120
        statuses: list[int] = []
        streams_ok: list[bool] = []
        killed = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as s:
                todo = iter(range(total))

                async def client() -> None:
                    for i in todo:
                        if i == kill_at:
                            os.kill(procs[0][0].pid, signal.SIGKILL)
                            killed.set()
                        if killed.is_set() and i % 10 == 0:  # streams after the kill
                            req = {"prompt": f"s{i}", "max_tokens": 5, "stream": True}
                            async with s.post(url, json=req) as r:
                                ev = sse_events(await r.text())
                                streams_ok.append(r.status == 200 and ev[-1] == "[DONE]")
                            continue
                        st, _, _ = await post(s, url, {"prompt": f"p{i}", "max_tokens": 5})
                        statuses.append(st)

                await asyncio.gather(*(client() for _ in range(concurrency)))
        finally:
            await router.close()
        assert killed.is_set()
        assert statuses.count(200) == len(statuses), sorted(set(statuses))
        assert streams_ok and all(streams_ok)
        assert len(statuses) + len(streams_ok) == total
        dead = router.fleet.backends[0]
        assert not dead.healthy or dead.ejections >= 1

    try:
        run(body, timeout=90)
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.terminate()
            p.wait(timeout=10)
