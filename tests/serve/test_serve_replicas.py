"""``infermesh serve --replicas N``: real server processes behind the router."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from infermesh.cli.serve import app
from infermesh.serve.replicas import ReplicaSet
from infermesh.serve.router import RouterConfig
from infermesh.serve.server import ServerConfig
from tests.serve._util import post, run, sse_events, stream_text

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_replicas_behind_the_router_serve_whole_and_streamed(tiny_ckpt: Path) -> None:
    async def body() -> None:
        rs = ReplicaSet(ServerConfig(checkpoint=str(tiny_ckpt)), 2, RouterConfig(port=0))
        port = await rs.start()
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as s:
                req = {"prompt": "def", "max_tokens": 10, "temperature": 0}
                outs = [await post(s, url + "/v1/completions", req) for _ in range(4)]
                assert all(o[0] == 200 for o in outs)
                texts = {o[1]["choices"][0]["text"] for o in outs}
                assert len(texts) == 1  # both replicas serve the same weights
                async with s.post(url + "/v1/completions", json={**req, "stream": True}) as r:
                    assert stream_text(sse_events(await r.text())) == texts.pop()
                async with s.get(url + "/v1/models") as r:
                    models = await r.json()
                assert models["data"][0]["id"] == "tiny-gpt"
                assert models["data"][0]["backends"] == 2
            procs = list(rs.procs)
        finally:
            await rs.close()
        assert all(p.poll() is not None for p in procs)

    run(body, timeout=120)


@pytest.mark.slow
def test_a_replica_that_exits_is_restarted_and_one_that_keeps_failing_is_given_up(
    tiny_ckpt: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt, symlinks=True)

    async def body() -> None:
        rs = ReplicaSet(
            ServerConfig(checkpoint=str(ckpt)),
            2,
            RouterConfig(port=0),
            max_restarts=2,
            backoff_s=0.05,
        )
        port = await rs.start()
        url = f"http://127.0.0.1:{port}"
        req = {"prompt": "def", "max_tokens": 4, "temperature": 0}

        async def all_answered(s: aiohttp.ClientSession, n: int) -> None:
            outs = [await post(s, url + "/v1/completions", req) for _ in range(n)]
            assert [o[0] for o in outs] == [200] * n

        async def until(predicate: Any, what: str) -> None:
            for _ in range(600):  # 60 s
                if predicate():
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"timed out waiting for {what}")

        try:
            async with aiohttp.ClientSession() as s:
                first = rs.urls[0]
                rs.procs[0].kill()
                await all_answered(s, 4)  # the other replica answers meanwhile
                await until(lambda: rs.urls[0] not in ("", first), "replica 0 back")
                assert rs.restarts == [1, 0]
                async with s.get(url + "/v1/models") as r:
                    assert (await r.json())["data"][0]["backends"] == 2
                await all_answered(s, 4)
                # a replica that cannot come back (its checkpoint is gone) is given up on
                shutil.rmtree(ckpt)
                rs.procs[0].kill()
                await until(lambda: rs._keepers[0].done(), "replica 0 given up")
                assert rs.urls[0] == "" and rs.restarts == [2, 0]
                await all_answered(s, 2)
        finally:
            await rs.close()

    with caplog.at_level(logging.INFO, logger="infermesh.serve.replicas"):
        run(body, timeout=150)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("replica 0 is back on http://") for m in messages), messages
    assert any(m.startswith("replica 0 exited with code") and "not restarting it (1 of 2" in m
               for m in messages), messages  # fmt: skip


@pytest.mark.slow
def test_serve_once_example_prints_prompt_and_completion(tiny_ckpt: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "serve_once.py"), "--checkpoint", str(tiny_ckpt)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "prompt: 'def '"
    assert "2 replicas behind the router" in lines[1]
    assert lines[2].startswith("def ") and len("\n".join(lines[2:])) >= 20


def test_cli_explains_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--checkpoint", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such file or directory" in r.output
    r = runner.invoke(app, ["serve", "--checkpoint", str(tmp_path), "--replicas", "0"])
    assert r.exit_code == 2 and "--replicas must be >= 1" in r.output
    r = runner.invoke(app, ["router", "start", "--backends", "http://a:1", "--strategy", "hybird"])
    assert r.exit_code == 2 and "unknown strategy 'hybird'; known:" in r.output
    r = runner.invoke(app, ["router", "start", "--backends", "ftp://a"])
    assert r.exit_code == 2 and "not an http(s) URL" in r.output
    r = runner.invoke(
        app, ["router", "start", "--backends", "http://a:1", "--strategy-options", "{x"]
    )
    assert r.exit_code == 2 and "--strategy-options is not JSON" in r.output


@pytest.mark.slow
def test_router_command_proxies_whole_and_streamed_answers(tmp_path: Path) -> None:
    """The CLI path (its own process, on uvloop) end to end, against a fake backend."""
    from tests.serve.test_router_faults import start_fake

    fake, backend = start_fake(tmp_path, "b0")
    router = subprocess.Popen(
        [sys.executable, "-m", "infermesh.cli.serve", "router", "start", "--backends", backend,
         "--port", "0", "--strategy", "hybrid"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert router.stdout is not None
        line = router.stdout.readline()
        assert line.startswith("infermesh router: http://127.0.0.1:"), line
        url = line.split()[2]

        async def body() -> None:
            async with aiohttp.ClientSession() as s:
                for _ in range(3):  # the second and third reuse the backend connection
                    st, out, _ = await post(s, url + "/v1/completions", {"prompt": "a"})
                    assert st == 200 and out["choices"][0]["text"].startswith("tok")
                req = {"prompt": "a", "max_tokens": 3, "stream": True}
                async with s.post(url + "/v1/completions", json=req) as r:
                    assert stream_text(sse_events(await r.text())) == "tok tok tok"

        run(body)
    finally:
        router.terminate()
        fake.terminate()
        assert router.wait(timeout=10) == 0
        fake.wait(timeout=10)
