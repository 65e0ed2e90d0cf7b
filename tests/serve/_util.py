"""Helpers shared by the serving tests (not a test module)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """Run an async test body with a hard time limit."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


def sse_events(raw: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body: parsed JSON, or the string ``[DONE]``."""
    out: list[Any] = []
    for block in raw.split("\n\n"):
        block = block.strip()
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def stream_text(events: list[Any]) -> str:
    """Concatenated text of completion or chat chunks."""
    parts = []
    for e in events:
        if e == "[DONE]":
            continue
        c = e["choices"][0]
        parts.append(c.get("text") or c.get("delta", {}).get("content") or "")
    return "".join(parts)


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0, every: float = 0.01) -> None:
    """Poll ``cond`` until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f}s")
        await asyncio.sleep(every)


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, **kw: Any
) -> tuple[int, Any, dict[str, str]]:
    """POST JSON; return status, decoded JSON (or text) and headers."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(
        url, data=data, headers={"Content-Type": "application/json", **kw.pop("headers", {})}, **kw
    ) as r:
        text = await r.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return r.status, parsed, dict(r.headers)
