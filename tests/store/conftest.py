"""Fixtures for the store tests: a store of each kind, and a way to run a coroutine on it.

``store_runner`` is parametrized over memory, sqlite and etcd. The etcd server is one real
``etcd`` process for the whole session (see ``infermesh.control.store.etcd_testing``); each
test works under its own key prefix there, so tests do not see each other's keys.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from infermesh.control.store import Store, open_store

Body = Callable[[Store, str], Awaitable[None]]
Runner = Callable[[Body], None]

TEST_TIMEOUT_S = 60.0


def run_async(coro: Awaitable[None], timeout: float = TEST_TIMEOUT_S) -> None:
    """Run ``coro`` on a fresh event loop, failing the test after ``timeout`` seconds."""

    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)

    asyncio.run(bounded())


def _store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite://{tmp_path / 'state' / 'store.db'}"
    server = request.getfixturevalue("etcd_server")
    return str(server.url)  # type: ignore[attr-defined]


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.slow)],
)
def store_runner(request: pytest.FixtureRequest, tmp_path: Path) -> Runner:
    """Call ``store_runner(body)``: runs ``await body(store, ns)`` with a fresh store and a
    unique key prefix ``ns``, then closes the store."""
    url = _store_url(request.param, tmp_path, request)
    ns = f"test-{uuid.uuid4().hex[:12]}/"

    def run(body: Body) -> None:
        async def main() -> None:
            async with open_store(url) as store:
                await body(store, ns)

        run_async(main())

    return run
