"""Hedging, retries, ejection and admission control of the router, over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time

import aiohttp

from infermesh.serve.router import BackendSpec, Router, RouterConfig, StaticBackendSource
from tests.serve._util import post, run, wait_until
from tests.serve.test_router_proxy import fleet, metric


async def warm(s: aiohttp.ClientSession, url: str, n: int) -> None:
    for _ in range(n):
        st, out, _ = await post(s, url + "/v1/completions", {"prompt": "w", "max_tokens": 1})
        assert st == 200, out


def test_a_slow_primary_is_hedged_and_the_loser_is_cancelled() -> None:
    async def body() -> None:
        kw = {"strategy": "round_robin", "hedge_fraction": 1.0, "decision_budget_s": 1.0}
        async with fleet([{"ttft_s": 0.002}] * 2, **kw) as (_, url, fakes):
            async with aiohttp.ClientSession() as s:
                await warm(s, url, 60)  # >= 20 samples per backend for the quantile
                h0 = metric("infermesh_router_hedges_total", strategy="round_robin")
                w0 = metric("infermesh_router_hedge_wins_total", strategy="round_robin")
                fakes[0].config.ttft_s = 5.0
                seen = fakes[0].requests
                loop = asyncio.get_running_loop()
                for _ in range(4):  # round robin reaches the slow backend within two
                    t0 = loop.time()
                    st, _, _ = await post(s, url + "/v1/completions", {"prompt": "x"})
                    assert st == 200 and loop.time() - t0 < 2.0
                assert fakes[0].requests > seen
            assert metric("infermesh_router_hedges_total", strategy="round_robin") - h0 >= 1
            assert metric("infermesh_router_hedge_wins_total", strategy="round_robin") - w0 >= 1
            await wait_until(lambda: fakes[0].cancelled >= 1 and fakes[0].active == 0)

    run(body)


def test_hedges_stay_within_the_budget() -> None:
    async def body() -> None:
        kw = {"strategy": "round_robin", "hedge_fraction": 0.1, "hedge_min_delay_s": 0.0}
        cfgs = [{"ttft_s": 0.001}, {"ttft_s": 0.001}]
        async with fleet(cfgs, **kw) as (_, url, fakes), aiohttp.ClientSession() as s:
            await warm(s, url, 40)
            for f in fakes:
                f.config.ttft_s = 0.03  # every request now exceeds the learned p95
            h0 = metric("infermesh_router_hedges_total", strategy="round_robin")
            await warm(s, url, 50)
            hedges = metric("infermesh_router_hedges_total", strategy="round_robin") - h0
            assert 1 <= hedges <= 0.1 * 90 + 1

    run(body)


def test_5xx_before_first_byte_is_retried_then_the_backend_is_ejected_and_readmitted() -> None:
    async def body() -> None:
        kw = {"strategy": "round_robin", "eject_after": 3, "eject_base_s": 0.3}
        async with fleet([{"fail_status": 500}, {}], **kw) as (router, url, fakes):
            bad = router.fleet.backends[0]
            e0 = metric("infermesh_router_ejections_total", node=bad.url)
            async with aiohttp.ClientSession() as s:
                for _ in range(10):
                    st, out, _ = await post(s, url + "/v1/completions", {"prompt": "a"})
                    assert st == 200, out
                assert metric("infermesh_router_ejections_total", node=bad.url) - e0 == 1
                assert fakes[0].requests == 3  # ejected after 3 failures, then skipped
                fakes[0].config.fail_status = 0
                await wait_until(lambda: bad.available(time.monotonic()), 5)
                await warm(s, url, 10)
                assert fakes[0].requests > 3  # re-admitted

    run(body)


def test_connect_errors_are_retried_on_another_backend() -> None:
    async def body() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            dead = sock.getsockname()[1]  # bound, never listening: connection refused
            async with fleet([{}]) as (_, _url, fakes):
                specs = [
                    BackendSpec(url=f"http://127.0.0.1:{dead}"),
                    BackendSpec(url=f"http://127.0.0.1:{fakes[0].port}"),
                ]
                cfg = RouterConfig(port=0, strategy="round_robin", scrape_interval_s=60)
                router = Router(cfg, StaticBackendSource(specs))
                port = await router.start()
                router.fleet.backends[0].healthy = True  # as if the scrape had not noticed yet
                router.fleet.changed()
                try:
                    async with aiohttp.ClientSession() as s:
                        for _ in range(4):
                            st, _, _ = await post(
                                s, f"http://127.0.0.1:{port}/v1/completions", {"prompt": "a"}
                            )
                            assert st == 200
                finally:
                    await router.close()
                assert fakes[0].requests == 4

    run(body)


def test_every_backend_failing_gives_the_backend_status_or_502() -> None:
    async def body() -> None:
        async with fleet([{"fail_status": 503}] * 2, eject_after=0) as (_, url, fakes):
            async with aiohttp.ClientSession() as s:
                st, out, _ = await post(s, url + "/v1/completions", {"prompt": "a"})
            assert st == 503 and out["error"]["message"] == "injected failure"
            assert sum(f.requests for f in fakes) == 2

    run(body)


def test_tenant_token_bucket_answers_429_with_retry_after_per_api_key() -> None:
    async def body() -> None:
        kw = {"tenant_rate": 0.5, "tenant_burst": 2}
        async with fleet([{}], **kw) as (_, url, _f), aiohttp.ClientSession() as s:
            a = {"Authorization": "Bearer tenant-a"}
            b = {"X-API-Key": "tenant-b"}
            got = [
                (await post(s, url + "/v1/completions", {"prompt": "x"}, headers=a))
                for _ in range(3)
            ]
            assert [g[0] for g in got] == [200, 200, 429]
            assert got[2][1]["error"]["code"] == "tenant_rate_limit"
            assert got[2][2]["Retry-After"] == "2"
            st, _, _ = await post(s, url + "/v1/completions", {"prompt": "x"}, headers=b)
            assert st == 200
            digest = "key-" + hashlib.sha256(b"tenant-a").hexdigest()[:12]  # never the key
            assert metric("infermesh_router_rejected_total", tenant=digest) >= 1

    run(body)


def test_global_inflight_limit_answers_429() -> None:
    async def body() -> None:
        cfgs = [{"ttft_s": 0.5}]
        async with fleet(cfgs, max_inflight=1) as (router, url, _f), aiohttp.ClientSession() as s:
            first = asyncio.ensure_future(post(s, url + "/v1/completions", {"prompt": "a"}))
            await wait_until(lambda: router.inflight == 1)
            st, out, headers = await post(s, url + "/v1/completions", {"prompt": "b"})
            assert st == 429 and out["error"]["code"] == "router_saturated"
            assert headers["Retry-After"] == "1"
            assert (await first)[0] == 200

    run(body)


def test_saturated_fleet_answers_429() -> None:
    async def body() -> None:
        cfgs = [{"ttft_s": 1.0, "max_concurrency": 1}]
        kw = {"saturation_load": 0.25}  # capacity 8: two queued-or-running requests saturate
        async with fleet(cfgs, **kw) as (router, url, fakes), aiohttp.ClientSession() as s:
            busy = [
                asyncio.ensure_future(post(s, url + "/v1/completions", {"prompt": "a"}))
                for _ in range(2)
            ]
            await wait_until(lambda: fakes[0].active + fakes[0].waiting == 2)
            await wait_until(lambda: (router.fleet.backends[0].load.waiting or 0) >= 1)
            st, out, _ = await post(s, url + "/v1/completions", {"prompt": "b"})
            assert st == 429 and out["error"]["code"] == "fleet_saturated"
            for b in busy:
                b.cancel()

    run(body)


def test_a_pooled_connection_the_backend_closed_is_replaced_without_a_failure() -> None:
    from infermesh.serve.fake_backend import FakeBackend, FakeBackendConfig
    from infermesh.serve.router.upstream import UpstreamPool

    async def body() -> None:
        first = FakeBackend(FakeBackendConfig())
        port = await first.start()
        pool = UpstreamPool()
        hdr = b"Content-Type: application/json\r\n"
        req = b'{"prompt": "a", "max_tokens": 2}'
        resp = await pool.post("127.0.0.1", port, "/v1/completions", hdr, req)
        assert resp.status == 200 and b"tok tok" in await resp.read()
        resp.close()  # back to the pool
        await first.close()  # closes the idle connection from the server side
        second = FakeBackend(FakeBackendConfig(port=port))
        await second.start()
        try:
            resp = await pool.post("127.0.0.1", port, "/v1/completions", hdr, req)
            assert resp.status == 200 and b"tok tok" in await resp.read()
            resp.close()
        finally:
            pool.close()
            await second.close()

    run(body)
