"""A real cell for the CLI tests: a coordinator (memory store) and agents on loopback, all in
one background thread with its own asyncio loop, and a helper that runs ``infermesh`` commands
in-process and captures their output and exit code."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infermesh.agent.agent import NodeAgent
from infermesh.cli.main import app
from infermesh.client.coordinator import COORDINATOR_ENV, CoordinatorClient
from infermesh.control.coordinator import Coordinator

START_TIMEOUT_S = 30.0


class CellThread:
    """Coordinator + agents on a private event loop in a daemon thread."""

    def __init__(self, workdir: Path, agents: int, slots: int = 2) -> None:
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.coordinator = Coordinator(store_url="memory://", port=0, dead_after_s=30.0)
        self.run(self.coordinator.start())
        self.address = self.coordinator.address
        self.agents: dict[str, NodeAgent] = {}
        self.tasks: dict[str, Any] = {}
        for i in range(agents):
            self.add_agent(f"node-{i}", slots=slots)

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = START_TIMEOUT_S) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def wrapped() -> Any:
            return fn()

        return self.run(wrapped())

    def add_agent(self, node_id: str, slots: int = 2, rack: str = "") -> NodeAgent:
        async def make() -> NodeAgent:
            agent = NodeAgent(
                coordinator=self.address,
                node_id=node_id,
                workdir=self.workdir / node_id,
                slots=slots,
                rack=rack,
                addr="127.0.0.1",
            )
            self.tasks[node_id] = asyncio.ensure_future(agent.run())
            await asyncio.wait_for(agent.registered.wait(), START_TIMEOUT_S)
            return agent

        agent: NodeAgent = self.run(make())
        self.agents[node_id] = agent
        return agent

    def close(self) -> None:
        async def stop() -> None:
            for agent in self.agents.values():
                agent.stop()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            await self.coordinator.stop(grace_s=0.2)

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``infermesh ARGS`` in-process; ``env`` adds environment variables."""
    runner = CliRunner()
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cell(tmp_path: Path) -> Iterator[CellThread]:
    c = CellThread(tmp_path / "cell", agents=2)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def client(cell: CellThread) -> Iterator[CoordinatorClient]:
    with CoordinatorClient(cell.address) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_coordinator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests name the coordinator explicitly (or test the variable on purpose)."""
    monkeypatch.delenv(COORDINATOR_ENV, raising=False)
