"""A fast fake OpenAI backend for router tests and benchmarks (no model, real HTTP).

It answers ``/v1/completions`` and ``/v1/chat/completions`` (whole or SSE) with
``max_tokens`` words after a configurable time to first token and per-token time, scaled by
``slowdown``; it can stall periodically (no progress during a stall window), limit its
concurrency (queueing the rest, reported as waiting), fail with a status, and simulate a
prefix cache (a prompt whose first ``prefix_chars`` were seen recently skips the prefill
time and counts a hit). ``/metrics`` publishes vLLM's load names; ``/stats`` returns its
counters as JSON (requests, cancelled, active, prefix hits).

Run one: ``python -m infermesh.serve.fake_backend --port 0 --ttft 0.01 --per-token 0.001``
(prints ``fake backend on http://HOST:PORT``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from infermesh.serve._aio import run

__all__ = ["FakeBackend", "FakeBackendConfig", "main"]


@dataclass
class FakeBackendConfig:
    """Behaviour of one fake backend."""

    model: str = "fake"
    host: str = "127.0.0.1"
    port: int = 0
    ttft_s: float = 0.0
    per_token_s: float = 0.0
    slowdown: float = 1.0
    stall_every_s: float = 0.0
    stall_for_s: float = 0.0
    max_concurrency: int = 0
    fail_status: int = 0
    prefix_chars: int = 0
    prefix_cache_size: int = 256
    ready_file: str | None = None


class FakeBackend:
    """The fake server; ``await start()`` returns the port, ``await close()`` stops it."""

    def __init__(self, config: FakeBackendConfig) -> None:
        self.config = config
        self.port = 0
        self.requests = 0
        self.cancelled = 0
        self.active = 0
        self.waiting = 0
        self.prefix_hits = 0
        self.prefix_lookups = 0
        self._cache: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._sem = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        self._t0 = time.monotonic()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/stats", self._stats)
        return app

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        if self.config.ready_file:
            tmp = Path(self.config.ready_file + ".tmp")
            tmp.write_text(f"{self.config.host}:{self.port}\n")
            tmp.replace(self.config.ready_file)
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stats(self) -> dict[str, Any]:
        """Counters (also served at ``/stats``)."""
        return {
            "requests": self.requests,
            "cancelled": self.cancelled,
            "active": self.active,
            "waiting": self.waiting,
            "prefix_hits": self.prefix_hits,
            "prefix_lookups": self.prefix_lookups,
        }

    # ------------------------------------------------------------------ timing

    async def _work(self, seconds: float) -> None:
        """Spend ``seconds`` of service time, making no progress during stalls."""
        c = self.config
        remaining = seconds * c.slowdown
        while True:
            if c.stall_every_s > 0 and c.stall_for_s > 0:
                phase = (time.monotonic() - self._t0) % c.stall_every_s
                if phase < c.stall_for_s:
                    await asyncio.sleep(c.stall_for_s - phase)
                    continue
                step = min(remaining, c.stall_every_s - phase)
            else:
                step = remaining
            if step > 0:
                await asyncio.sleep(step)
            remaining -= step
            if remaining <= 1e-9:
                return

    # ------------------------------------------------------------------ routes

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.config.model, "object": "model"}]}
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        cap = self.config.max_concurrency or 1_000_000
        m = f'{{model="{self.config.model}"}}'
        text = (
            f"vllm:num_requests_running{m} {self.active}\n"
            f"vllm:num_requests_waiting{m} {self.waiting}\n"
            f"vllm:kv_cache_usage_perc{m} {min(1.0, self.active / cap)}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        c = self.config
        if c.fail_status:
            return web.json_response(
                {"error": {"message": "injected failure", "type": "server_error"}},
                status=c.fail_status,
            )
        chat = request.path.endswith("chat/completions")
        prompt = json.dumps(body.get("messages")) if chat else str(body.get("prompt", ""))
        n = int(body.get("max_tokens") or 16)
        stream = bool(body.get("stream"))
        try:
            if self._sem is not None:
                self.waiting += 1
                try:
                    await self._sem.acquire()
                finally:
                    self.waiting -= 1
            self.active += 1
            try:
                return await self._generate(request, prompt, n, stream, chat)
            finally:
                self.active -= 1
                if self._sem is not None:
                    self._sem.release()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def _prefill_s(self, prompt: str) -> float:
        c = self.config
        if c.prefix_chars <= 0:
            return c.ttft_s
        key = prompt[: c.prefix_chars]
        self.prefix_lookups += 1
        hit = key in self._cache
        self._cache[key] = None
        self._cache.move_to_end(key)
        while len(self._cache) > c.prefix_cache_size:
            self._cache.popitem(last=False)
        if hit:
            self.prefix_hits += 1
            return c.ttft_s * 0.1
        return c.ttft_s

    async def _generate(
        self, request: web.Request, prompt: str, n: int, stream: bool, chat: bool
    ) -> web.StreamResponse:
        c = self.config
        created = int(time.time())
        base = {"id": f"cmpl-fake{self.requests}", "created": created, "model": c.model}
        await self._work(self._prefill_s(prompt))
        if not stream:
            await self._work(c.per_token_s * max(0, n - 1))
            text = " ".join(["tok"] * n)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text, "logprobs": None}
            )
            choice["finish_reason"] = "length"
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion" if chat else "text_completion",
                    "choices": [choice],
                    "usage": {"prompt_tokens": len(prompt), "completion_tokens": n},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"
        for i in range(n):
            if i:
                await self._work(c.per_token_s)
            last = i == n - 1
            piece = "tok" if i == 0 else " tok"
            choice = (
                {"index": 0, "delta": {"content": piece}}
                if chat
                else {"index": 0, "text": piece, "logprobs": None}
            )
            choice["finish_reason"] = "length" if last else None
            data = json.dumps({**base, "object": obj, "choices": [choice]})
            await resp.write(b"data: " + data.encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def _serve(config: FakeBackendConfig) -> None:
    backend = FakeBackend(config)
    port = await backend.start()
    print(f"fake backend on http://{config.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await backend.close()


def main(argv: list[str] | None = None) -> int:
    """Command line of the fake backend (flags mirror :class:`FakeBackendConfig`)."""
    p = argparse.ArgumentParser(prog="python -m infermesh.serve.fake_backend")
    defaults = asdict(FakeBackendConfig())
    for name, value in defaults.items():
        flag = "--" + (name[:-2] if name.endswith("_s") else name).replace("_", "-")
        kind = type(value) if value is not None else str
        p.add_argument(flag, dest=name, type=kind, default=value)
    args = p.parse_args(argv)
    run(_serve(FakeBackendConfig(**vars(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
