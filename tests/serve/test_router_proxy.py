"""The router in front of real (fake-model) HTTP backends on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from infermesh.obs.metrics import REGISTRY
from infermesh.serve.fake_backend import FakeBackend, FakeBackendConfig
from infermesh.serve.router import BackendSpec, Router, RouterConfig, StaticBackendSource
from tests.serve._util import post, run, sse_events, stream_text, wait_until


@asynccontextmanager
async def fleet(
    backends: list[dict[str, Any]], **router_kw: Any
) -> AsyncIterator[tuple[Router, str, list[FakeBackend]]]:
    fakes = [FakeBackend(FakeBackendConfig(**b)) for b in backends]
    for f in fakes:
        await f.start()
    specs = [BackendSpec(url=f"http://127.0.0.1:{f.port}") for f in fakes]
    router_kw.setdefault("scrape_interval_s", 0.05)
    router = Router(RouterConfig(port=0, **router_kw), StaticBackendSource(specs))
    port = await router.start()
    try:
        yield router, f"http://127.0.0.1:{port}", fakes
    finally:
        await router.close()
        for f in fakes:
            await f.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_completions_pass_through_whole_and_streamed() -> None:
    async def body() -> None:
        async with fleet([{}, {}]) as (_, url, fakes), aiohttp.ClientSession() as s:
            st, out, _ = await post(s, url + "/v1/completions", {"prompt": "hi", "max_tokens": 3})
            assert st == 200 and out["choices"][0]["text"] == "tok tok tok"
            req = {"prompt": "hi", "max_tokens": 4, "stream": True}
            async with s.post(url + "/v1/completions", json=req) as r:
                assert r.headers["Content-Type"].startswith("text/event-stream")
                events = sse_events(await r.text())
            assert events[-1] == "[DONE]" and stream_text(events) == "tok tok tok tok"
            chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
            st, out, _ = await post(s, url + "/v1/chat/completions", chat)
            assert out["choices"][0]["message"]["content"] == "tok tok"
            assert sum(f.requests for f in fakes) == 3

    run(body)


def test_models_are_aggregated_and_requests_go_to_a_backend_serving_the_model() -> None:
    async def body() -> None:
        cfgs = [{"model": "alpha"}, {"model": "beta"}, {"model": "beta"}]
        async with fleet(cfgs) as (_, url, fakes), aiohttp.ClientSession() as s:
            async with s.get(url + "/v1/models") as r:
                models = await r.json()
            assert {m["id"]: m["backends"] for m in models["data"]} == {"alpha": 1, "beta": 2}
            for _ in range(6):
                st, _, _ = await post(s, url + "/v1/completions", {"model": "alpha", "prompt": "a"})
                assert st == 200
            assert fakes[0].requests == 6 and fakes[1].requests + fakes[2].requests == 0
            st, out, _ = await post(s, url + "/v1/completions", {"model": "gamma", "prompt": "a"})
            assert st == 404 and out["error"]["code"] == "model_not_found"
            assert "alpha, beta" in out["error"]["message"]

    run(body)


def test_bad_input_gets_the_right_status() -> None:
    async def body() -> None:
        async with fleet([{}], max_body_bytes=2000) as (_, url, _f), aiohttp.ClientSession() as s:
            st, out, _ = await post(s, url + "/v1/completions", b"{oops")
            assert st == 400 and out["error"]["code"] == "invalid_json"
            st, out, _ = await post(s, url + "/v1/completions", {"prompt": "x" * 5000})
            assert st == 413 and "--max-body-bytes" in out["error"]["message"]
            st, out, _ = await post(s, url + "/v1/completions", {"prompt": "a", "model": 3})
            assert st == 400 and out["error"]["param"] == "model"

    run(body)


@pytest.mark.parametrize(
    "strategy",
    [
        "round_robin",
        "random",
        "least_loaded",
        "power_of_two",
        "prefix_affinity",
        "mesh",
        "hybrid",
        "predictive",
    ],
)
def test_every_named_strategy_routes_across_backends(strategy: str) -> None:
    async def body() -> None:
        async with fleet([{}, {}, {}], strategy=strategy) as (_, url, fakes):
            async with aiohttp.ClientSession() as s:
                results = await asyncio.gather(
                    *(
                        post(s, url + "/v1/completions", {"prompt": f"p{i} " * 20, "max_tokens": 2})
                        for i in range(30)
                    )
                )
            assert all(r[0] == 200 for r in results)
            assert sum(f.requests for f in fakes) == 30
            assert metric("infermesh_router_requests_total", strategy=strategy) >= 30

    run(body)


def test_prefix_affinity_keeps_a_prefix_on_one_backend() -> None:
    async def body() -> None:
        cfgs = [{"prefix_chars": 32}] * 3
        async with fleet(cfgs, strategy="prefix_affinity") as (_, url, fakes):
            async with aiohttp.ClientSession() as s:
                for i in range(4):
                    for j in range(5):
                        p = f"system prompt {i} " + "." * 80 + f" question {j}"
                        await post(s, url + "/v1/completions", {"prompt": p, "max_tokens": 1})
            hits = sum(f.prefix_hits for f in fakes)
            assert hits == 16  # every request after the first of its prefix hit the cache

    run(body)


def test_ab_split_is_stable_per_api_key_with_metrics_per_arm() -> None:
    async def body() -> None:
        kw = {"strategy": "round_robin", "ab_strategy": "least_loaded", "ab_fraction": 0.5}
        async with fleet([{}, {}], **kw) as (router, url, _f), aiohttp.ClientSession() as s:
            a0 = metric("infermesh_router_requests_total", strategy="round_robin")
            b0 = metric("infermesh_router_requests_total", strategy="least_loaded")
            for k in range(40):
                hdr = {"Authorization": f"Bearer key-{k}"}
                for _ in range(2):
                    await post(s, url + "/v1/completions", {"prompt": "a"}, headers=hdr)
            a = metric("infermesh_router_requests_total", strategy="round_robin") - a0
            b = metric("infermesh_router_requests_total", strategy="least_loaded") - b0
            assert a + b == 80 and a > 10 and b > 10
            assert a % 2 == 0 and b % 2 == 0  # both requests of a key went to the same arm
            pool = router.fleet.pool(None)
            assert pool is not None and set(pool.hosts) == {"round_robin", "least_loaded"}

    run(body)


def test_strategy_over_budget_falls_back_and_is_counted() -> None:
    async def body() -> None:
        kw = {"strategy": "mesh", "decision_budget_s": 1e-9}
        async with fleet([{}, {}], **kw) as (_, url, _f), aiohttp.ClientSession() as s:
            before = metric("infermesh_router_strategy_fallbacks_total", strategy="mesh")
            for _ in range(5):
                st, _, _ = await post(s, url + "/v1/completions", {"prompt": "a"})
                assert st == 200
            after = metric("infermesh_router_strategy_fallbacks_total", strategy="mesh")
            assert after - before == 5

    run(body)


def test_client_disconnect_mid_stream_cancels_the_backend_request_and_leaks_nothing() -> None:
    async def body() -> None:
        cfg = {"per_token_s": 0.02}
        async with fleet([cfg]) as (router, url, fakes):
            baseline = {t for t in asyncio.all_tasks()}
            for _ in range(3):
                async with aiohttp.ClientSession() as s:
                    req = {"prompt": "a", "max_tokens": 500, "stream": True}
                    async with s.post(url + "/v1/completions", json=req) as r:
                        await r.content.readline()
                        assert fakes[0].active == 1
            await wait_until(lambda: fakes[0].cancelled == 3 and fakes[0].active == 0)
            await wait_until(lambda: router.inflight == 0)
            assert all(b.inflight == 0 for b in router.fleet.backends)
            await wait_until(lambda: {t for t in asyncio.all_tasks()} - baseline == set())

    run(body)


def test_health_and_metrics() -> None:
    async def body() -> None:
        async with fleet([{}]) as (router, url, fakes), aiohttp.ClientSession() as s:
            async with s.get(url + "/health") as r:
                assert r.status == 200
            await post(s, url + "/v1/completions", {"prompt": "a"})
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            assert 'infermesh_router_requests_total{strategy="power_of_two"}' in text
            assert "infermesh_router_decision_seconds_bucket" in text
            await fakes[0].close()
            await wait_until(lambda: not router.fleet.backends[0].healthy)
            async with s.get(url + "/health") as r:
                assert r.status == 503

    run(body)


def test_requests_are_traced_and_api_keys_never_become_labels() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from infermesh.obs.tracing import add_exporter

    exporter = InMemorySpanExporter()
    add_exporter(exporter)

    async def body() -> None:
        async with fleet([{}]) as (_, url, _fakes), aiohttp.ClientSession() as s:
            headers = {"Authorization": "Bearer sk-secret-123"}
            async with s.post(
                url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers=headers
            ) as r:
                assert r.status == 200
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            assert "sk-secret-123" not in text

    run(body)
    spans = [s for s in exporter.get_finished_spans() if s.name == "router.request"]
    assert spans and spans[-1].attributes["status"] == 200
    assert spans[-1].attributes["path"] == "/v1/completions"


def test_router_serves_https_with_a_tls_dir(tmp_path) -> None:
    import shutil
    import ssl

    from infermesh.control.store.etcd_testing import make_tls_files

    pki = make_tls_files(tmp_path / "pki")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(pki.ca, bundle / "ca.pem")
    shutil.copy(pki.server_cert, bundle / "cert.pem")
    shutil.copy(pki.server_key, bundle / "key.pem")
    trust = ssl.create_default_context(cafile=str(pki.ca))

    async def body() -> None:
        async with fleet([{}], tls_dir=str(bundle)) as (_, url, _fakes):
            https = url.replace("http://", "https://")
            async with aiohttp.ClientSession() as s:
                payload = {"prompt": "hi", "max_tokens": 2}
                async with s.post(https + "/v1/completions", json=payload, ssl=trust) as r:
                    assert r.status == 200
                with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
                    async with s.post(url + "/v1/completions", json=payload) as r:
                        await r.read()

    run(body)
