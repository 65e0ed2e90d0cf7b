"""Run a coroutine on uvloop when it is installed (faster sockets), else on asyncio."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["run", "until_signal"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``uvloop.run(coro)`` if uvloop is importable, else ``asyncio.run(coro)``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def until_signal() -> None:
    """Return when the process gets SIGINT or SIGTERM (servers' foreground wait)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
