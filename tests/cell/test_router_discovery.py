"""The router discovers model servers through the cell: agent --endpoint -> coordinator ->
ListEndpoints -> CoordinatorBackendSource. Real gRPC, real HTTP, real agents (in-process)."""

from __future__ import annotations

import asyncio

import aiohttp

from infermesh.agent.agent import NodeAgent
from infermesh.agent.telemetry import Telemetry
from infermesh.client.coordinator import CoordinatorClient, pb
from infermesh.serve.fake_backend import FakeBackend, FakeBackendConfig
from infermesh.serve.router import Router, RouterConfig
from infermesh.serve.router.sources import CoordinatorBackendSource
from tests.cell.cellproc import wait_for
from tests.cell.inproc import ThreadedCoordinator


def test_router_follows_the_cells_serving_endpoints(tmp_path):
    coord = ThreadedCoordinator()
    agents: list[NodeAgent] = []
    try:

        async def start_fakes():
            fakes = [FakeBackend(FakeBackendConfig()) for _ in range(2)]
            for f in fakes:
                await f.start()
            return fakes

        fakes = coord.run(start_fakes())
        for i, fake in enumerate(fakes):
            endpoint = pb.ServingEndpoint(url=f"http://127.0.0.1:{fake.port}", kind="vllm")
            agent = NodeAgent(
                coordinator=coord.address,
                node_id=f"srv-{i}",
                workdir=tmp_path / f"srv-{i}",
                addr="127.0.0.1",
                telemetry=Telemetry.for_node(endpoints=[endpoint]),
                endpoints=[endpoint],
            )
            agent.interval_s = 0.2
            asyncio.run_coroutine_threadsafe(agent.run(), coord.loop)
            agents.append(agent)
        with CoordinatorClient(coord.address) as c:
            wait_for(lambda: len(c.list_endpoints()) == 2, 10, "two endpoints")
            detail = wait_for(
                lambda: (
                    (d := c.get_node("srv-0")).signals
                    and any(s.name.startswith("runtime.") for s in d.signals)
                    and d
                ),
                10,
                "runtime signals scraped by the agent",
            )
            assert any(s.name == "runtime.up" and s.value == 1 for s in detail.signals)

        async def route() -> tuple[int, int]:
            source = CoordinatorBackendSource(coord.address, poll_s=0.1)
            router = Router(RouterConfig(port=0, scrape_interval_s=0.05), source)
            port = await router.start()
            url = f"http://127.0.0.1:{port}/v1/completions"
            try:
                async with aiohttp.ClientSession() as s:
                    for _ in range(6):
                        async with s.post(url, json={"prompt": "a", "max_tokens": 2}) as r:
                            assert r.status == 200
                    both = (fakes[0].requests, fakes[1].requests)
                    with CoordinatorClient(coord.address) as c:
                        await asyncio.to_thread(c.set_node_state, "srv-0", "quarantine", "test")
                    for _ in range(100):  # the source polls every 0.1 s
                        if len(router.fleet.backends) == 1:
                            break
                        await asyncio.sleep(0.05)
                    before = fakes[0].requests
                    for _ in range(5):
                        async with s.post(url, json={"prompt": "a", "max_tokens": 2}) as r:
                            assert r.status == 200
                    return both[0] * both[1], fakes[0].requests - before
            finally:
                await router.close()
                await source.close()

        spread, to_quarantined = coord.run(route())
        assert spread > 0  # both servers got traffic while both nodes were ALIVE
        assert to_quarantined == 0  # none after its node was quarantined
    finally:
        for agent in agents:
            coord.loop.call_soon_threadsafe(agent.stop)
        coord.close()
