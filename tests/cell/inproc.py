"""A coordinator on its own asyncio loop in a background thread (fast API tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from infermesh.control.coordinator import Coordinator


class ThreadedCoordinator:
    def __init__(self, store_url: str = "memory://", **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.coordinator = Coordinator(store_url=store_url, port=0, **options)
        self.run(self.coordinator.start())
        self.address = self.coordinator.address

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.run(self.coordinator.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
