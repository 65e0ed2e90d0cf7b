"""Pure parts of the router: adapters, backend lists, admission, hedge budget, aliases."""

from __future__ import annotations

import json

import pytest

from infermesh.core.errors import UsageError
from infermesh.serve.openai import parse_completion_body
from infermesh.serve.router.adapters import adapter, known_adapters
from infermesh.serve.router.admission import HedgeBudget, TenantBuckets
from infermesh.serve.router.api import RouterConfig, parse_backends
from infermesh.serve.router.fleet import Fleet
from infermesh.serve.strategies import create
from infermesh.serve.strategies.predictive import HybridMesh, PredictiveMesh
from infermesh.serve.strategies.testing import make_view


@pytest.mark.parametrize(
    ("kind", "text", "running", "waiting", "kv"),
    [
        (
            "vllm",
            '# HELP x\nvllm:num_requests_running{model_name="m"} 3.0\n'
            'vllm:num_requests_running{model_name="n"} 1\n'
            'vllm:num_requests_waiting{model_name="m"} 2\nvllm:gpu_cache_usage_perc 0.5\n',
            4.0,
            2.0,
            0.5,
        ),
        ("infermesh", 'vllm:num_requests_running{model="t"} 2\n', 2.0, None, None),
        (
            "sglang",
            "sglang:num_running_reqs 5\nsglang:num_queue_reqs 7 1700000000\n"
            "sglang:token_usage 0.25\n",
            5.0,
            7.0,
            0.25,
        ),
        ("tgi", "tgi_batch_current_size 4\ntgi_queue_size 9\n", 4.0, 9.0, None),
        ("triton", 'nv_inference_pending_request_count{model="e"} 6\n', None, 6.0, None),
    ],
)
def test_adapters_read_their_runtime_load_metrics(
    kind: str, text: str, running: float | None, waiting: float | None, kv: float | None
) -> None:
    load = adapter(kind).load(text)
    assert (load.running, load.waiting, load.kv_usage) == (running, waiting, kv)


def test_triton_adapter_rewrites_requests_and_answers() -> None:
    a = adapter("triton", "ensemble")
    params = parse_completion_body(
        {"prompt": "hi", "max_tokens": 5, "stop": ".", "stream": True, "seed": 3}, chat=False
    )
    path, body = a.request("/v1/completions", b"", params)
    assert path == "/v2/models/ensemble/generate_stream"
    sent = json.loads(body)
    assert sent["text_input"] == "hi"
    assert sent["parameters"] == {
        "max_tokens": 5,
        "temperature": 1.0,
        "top_p": 1.0,
        "stream": True,
        "random_seed": 3,
        "stop": ["."],
    }
    chunk = json.loads(a.event(b'{"text_output": "yo"}', params))
    assert chunk["choices"][0]["text"] == "yo" and chunk["object"] == "text_completion"
    chat = parse_completion_body({"messages": [{"role": "user", "content": "q"}]}, chat=True)
    whole = json.loads(a.response(b'{"model_name": "e", "text_output": "ok"}', chat))
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "ok"}


def test_backend_lists_parse_or_explain() -> None:
    specs = parse_backends("http://a:1, sglang=http://b:2/ ,triton=http://c:3/v2/models/ens")
    assert [(s.kind, s.url, s.model) for s in specs] == [
        ("vllm", "http://a:1", None),
        ("sglang", "http://b:2", None),
        ("triton", "http://c:3", "ens"),
    ]
    assert set(known_adapters()) == {"infermesh", "sglang", "tgi", "triton", "vllm"}
    with pytest.raises(UsageError, match="unknown backend kind 'vlm'"):
        parse_backends("vlm=http://a:1")
    with pytest.raises(UsageError, match="not an http"):
        parse_backends("a:1")
    with pytest.raises(UsageError, match="needs its model"):
        parse_backends("triton=http://c:3")
    with pytest.raises(UsageError, match="same URL twice"):
        parse_backends("http://a:1,http://a:1")
    with pytest.raises(UsageError, match="empty"):
        parse_backends(" , ")


def test_router_config_rejects_bad_settings() -> None:
    with pytest.raises(UsageError, match="--ab-fraction"):
        RouterConfig(ab_fraction=1.5)
    with pytest.raises(UsageError, match="--hedge-quantile"):
        RouterConfig(hedge_quantile=1.0)
    with pytest.raises(UsageError, match="--scrape-interval"):
        RouterConfig(scrape_interval_s=0)


def test_tenant_buckets_refill_at_the_rate_and_evict_old_keys() -> None:
    now = [0.0]
    b = TenantBuckets(rate=2.0, burst=2.0, clock=lambda: now[0], max_tenants=2)
    assert [b.take("a") for _ in range(2)] == [0.0, 0.0]
    assert b.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert b.take("a") == 0.0
    assert TenantBuckets.retry_after(0.2) == "1" and TenantBuckets.retry_after(2.1) == "3"
    b.take("b")
    b.take("c")  # evicts "a" (least recently seen): it starts full again
    assert [b.take("a") for _ in range(2)] == [0.0, 0.0]
    assert TenantBuckets(rate=0.0, burst=1.0).take("x") == 0.0  # disabled


def test_hedge_budget_caps_hedges_to_the_fraction() -> None:
    budget = HedgeBudget(0.1)
    spent = 0
    for _ in range(1000):
        budget.earn()
        spent += budget.spend()
    assert 99 <= spent <= 100
    assert not HedgeBudget(0.0).spend()


def test_short_strategy_names_map_onto_the_registry() -> None:
    assert type(create("hybrid")) is HybridMesh
    assert type(create("predictive")) is PredictiveMesh


def test_fill_order_puts_decision_first_then_least_loaded_and_panics_when_all_down() -> None:
    view = make_view(cells=1, nodes_per_cell=4, queue_depth=[5, 1, 3, 0])
    view.available[3] = False
    assert Fleet.fill_order(view, (2, 2), 3) == [2, 1, 0]
    view.available[:] = False
    assert Fleet.fill_order(view, (2,), 2) == [2, 3]


def test_view_counts_this_routers_sends_since_the_scrape_and_ejects_then_readmits() -> None:
    from infermesh.serve.router.adapters import Load
    from infermesh.serve.router.api import BackendSpec

    now = [100.0]
    cfg = RouterConfig(eject_after=2, eject_base_s=1.0)
    fleet = Fleet(cfg, clock=lambda: now[0])
    fleet.set_specs([BackendSpec(url="http://a"), BackendSpec(url="http://b")])
    a, b = fleet.backends
    pool = fleet.pool(None)
    assert pool is not None
    fleet.note_send(a)
    fleet.note_send(a)
    assert pool.view.sent_since_update.tolist() == [2.0, 0.0]
    # a scrape that saw both requests: they are now in the published queue
    a.load, a.inflight_at_scrape = Load(running=2.0), 2
    fleet.changed()
    pool = fleet.pool(None)
    assert pool is not None
    assert pool.view.queue_depth.tolist() == [2.0, 0.0]
    assert pool.view.sent_since_update.tolist() == [0.0, 0.0]
    fleet.note_done(a)
    fleet.note_send(b)
    assert pool.view.sent_since_update.tolist() == [0.0, 1.0]
    assert not b.record_failure(now[0], cfg)
    assert b.record_failure(now[0], cfg)  # second consecutive failure: ejected for 1 s
    fleet.changed()
    view = fleet.pool(None).view  # type: ignore[union-attr]
    assert view.available.tolist() == [True, False]
    now[0] += 1.01
    view = fleet.pool(None).view  # type: ignore[union-attr]
    assert view.available.tolist() == [True, True]
