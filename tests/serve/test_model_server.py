"""The checkpoint model server over real HTTP on 127.0.0.1 (in-process, port 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch

from infermesh.core.errors import UsageError
from infermesh.obs.metrics import REGISTRY
from infermesh.serve.server import ModelServer, ServerConfig, load_model, resolve_checkpoint
from tests.serve._util import post, run, sse_events, stream_text, wait_until


@asynccontextmanager
async def serving(ckpt: Path, **kw: Any) -> AsyncIterator[tuple[ModelServer, str]]:
    cfg = ServerConfig(checkpoint=str(ckpt), port=0, device="cpu", **kw)
    server = ModelServer(cfg, load_model(ckpt, "cpu"))
    port = await server.start()
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        await server.close()


def greedy_reference(ckpt: Path, prompt: str, n: int) -> str:
    loaded = load_model(ckpt, "cpu")
    idx = torch.tensor([loaded.tokenizer.encode(prompt)])
    out = loaded.model.generate(idx, n, temperature=0.0)
    return loaded.tokenizer.decode(out[0, idx.shape[1] :])


def test_greedy_completion_matches_model_generate_including_past_the_context(
    tiny_ckpt: Path,
) -> None:
    # block_size is 32: 50 new tokens run past the KV cache into the sliding-window path
    prompt = "def add(a, b):\n"
    want = greedy_reference(tiny_ckpt, prompt, 50)

    async def body() -> None:
        async with serving(tiny_ckpt) as (_, url), aiohttp.ClientSession() as s:
            req = {"prompt": prompt, "max_tokens": 50, "temperature": 0}
            status, out, _ = await post(s, url + "/v1/completions", req)
            assert status == 200, out
            assert out["object"] == "text_completion"
            assert out["choices"][0]["text"] == want
            assert out["choices"][0]["finish_reason"] == "length"
            assert out["usage"] == {
                "prompt_tokens": 15,
                "completion_tokens": 50,
                "total_tokens": 65,
            }

    run(body)


def test_streamed_completion_equals_the_whole_one_and_ends_with_done(tiny_ckpt: Path) -> None:
    async def body() -> None:
        async with serving(tiny_ckpt) as (_, url), aiohttp.ClientSession() as s:
            req: dict[str, Any] = {"prompt": "return", "max_tokens": 20, "temperature": 0}
            _, whole, _ = await post(s, url + "/v1/completions", req)
            async with s.post(url + "/v1/completions", json={**req, "stream": True}) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                events = sse_events(await r.text())
            assert events[-1] == "[DONE]"
            assert events[-2]["choices"][0]["finish_reason"] == "length"
            assert len(events) > 3  # token by token, not one chunk
            assert stream_text(events) == whole["choices"][0]["text"]

    run(body)


def test_chat_completion_whole_and_streamed(tiny_ckpt: Path) -> None:
    async def body() -> None:
        async with serving(tiny_ckpt) as (_, url), aiohttp.ClientSession() as s:
            req: dict[str, Any] = {
                "model": "tiny-gpt",
                "messages": [{"role": "user", "content": "add"}],
                "max_tokens": 12,
                "temperature": 0,
            }
            status, whole, _ = await post(s, url + "/v1/chat/completions", req)
            assert status == 200, whole
            assert whole["object"] == "chat.completion"
            msg = whole["choices"][0]["message"]
            assert msg["role"] == "assistant" and len(msg["content"]) == 12
            async with s.post(url + "/v1/chat/completions", json={**req, "stream": True}) as r:
                events = sse_events(await r.text())
            assert events[0]["object"] == "chat.completion.chunk"
            assert events[0]["choices"][0]["delta"]["role"] == "assistant"
            assert stream_text(events) == msg["content"]

    run(body)


def test_seeded_requests_are_reproducible_and_seeds_differ(tiny_ckpt: Path) -> None:
    async def body() -> None:
        async with serving(tiny_ckpt) as (_, url), aiohttp.ClientSession() as s:

            async def sample(seed: int) -> str:
                req = {"prompt": "a", "max_tokens": 24, "temperature": 1.5, "seed": seed}
                _, out, _ = await post(s, url + "/v1/completions", req)
                return str(out["choices"][0]["text"])

            first = await sample(7)
            # the same seed again, this time while other requests share the batch
            again, *_ = await asyncio.gather(sample(7), sample(8), sample(9))
            assert again == first
            others = {await sample(seed) for seed in (1, 2, 3)}
            assert len(others | {first}) > 1

    run(body)


def test_top_p_near_zero_is_greedy(tiny_ckpt: Path) -> None:
    want = greedy_reference(tiny_ckpt, "def", 16)

    async def body() -> None:
        async with serving(tiny_ckpt) as (_, url), aiohttp.ClientSession() as s:
            req = {"prompt": "def", "max_tokens": 16, "temperature": 1.0, "top_p": 1e-6}
            _, out, _ = await post(s, url + "/v1/completions", req)
            assert out["choices"][0]["text"] == want

    run(body)


def test_stop_string_ends_the_completion_before_it_streamed_or_not(tiny_ckpt: Path) -> None:
    full = greedy_reference(tiny_ckpt, "def", 30)
    stop = full[6:8]
    cut = full.find(stop)

    async def body() -> None:
        async with serving(tiny_ckpt) as (_, url), aiohttp.ClientSession() as s:
            req: dict[str, Any] = {"prompt": "def", "max_tokens": 30, "temperature": 0}
            req["stop"] = [stop, "\u2603"]
            _, out, _ = await post(s, url + "/v1/completions", req)
            assert out["choices"][0]["text"] == full[:cut]
            assert out["choices"][0]["finish_reason"] == "stop"
            async with s.post(url + "/v1/completions", json={**req, "stream": True}) as r:
                events = sse_events(await r.text())
            assert stream_text(events) == full[:cut]
            assert events[-2]["choices"][0]["finish_reason"] == "stop"

    run(body)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        ({"prompt": "a", "temperature": -1}, 400, "temperature"),
        ({"prompt": "a", "temperature": "hot"}, 400, "temperature"),
        ({"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "a", "max_tokens": 10**6}, 400, "max_tokens"),
        ({"prompt": "a", "top_p": 0}, 400, "top_p"),
        ({"prompt": "a", "stop": 5}, 400, "stop"),
        ({"prompt": "a", "seed": 1.5}, 400, "seed"),
        ({"prompt": "a", "n": 2}, 400, "n"),
        ({"prompt": "a", "stream": "yes"}, 400, "stream"),
        ({"prompt": 3}, 400, "prompt"),
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": "a", "model": "gpt-9"}, 404, "model"),
    ],
)
def test_bad_requests_get_openai_errors_naming_the_field(
    tiny_ckpt: Path, body: Any, status: int, param: str | None
) -> None:
    async def run_one() -> None:
        async with serving(tiny_ckpt) as (_, url), aiohttp.ClientSession() as s:
            got, out, _ = await post(s, url + "/v1/completions", body)
            assert got == status, out
            err = out["error"]
            assert err["param"] == param
            assert err["message"] and err["type"]
            if param:
                assert param in err["message"]

    run(run_one)


def test_bad_chat_messages_are_rejected(tiny_ckpt: Path) -> None:
    async def body() -> None:
        async with serving(tiny_ckpt) as (_, url), aiohttp.ClientSession() as s:
            for msgs, param in (
                ([], "messages"),
                ([{"role": "wizard", "content": "x"}], "messages[0].role"),
                ([{"role": "user", "content": 1}], "messages[0].content"),
            ):
                st, out, _ = await post(s, url + "/v1/chat/completions", {"messages": msgs})
                assert st == 400 and out["error"]["param"] == param

    run(body)


def test_oversize_body_is_413(tiny_ckpt: Path) -> None:
    async def body() -> None:
        async with (
            serving(tiny_ckpt, max_body_bytes=1000) as (_, url),
            aiohttp.ClientSession() as s,
        ):
            st, out, _ = await post(s, url + "/v1/completions", {"prompt": "x" * 5000})
            assert st == 413 and out["error"]["code"] == "body_too_large"

    run(body)


def test_requests_join_and_leave_the_running_batch_between_steps(tiny_ckpt: Path) -> None:
    async def body() -> None:
        async with serving(tiny_ckpt, max_batch=4) as (server, url), aiohttp.ClientSession() as s:
            long_req = {"prompt": "def", "max_tokens": 400, "temperature": 0, "stream": True}
            async with s.post(url + "/v1/completions", json=long_req) as r:
                await r.content.readline()  # the long request is being decoded
                steps_before = server.engine.stats.steps
                shorts = [{"prompt": p, "max_tokens": 5, "temperature": 0} for p in "abc"]
                outs = await asyncio.gather(*(post(s, url + "/v1/completions", q) for q in shorts))
                assert all(o[0] == 200 for o in outs)
                # the short ones finished while the long one still runs: they joined its batch
                assert server.engine.stats.max_batch_seen >= 2
                assert any(seq.params.max_tokens == 400 for seq in server.engine.running)
                assert server.engine.stats.steps - steps_before < 15
                rest = await r.text()
            assert sse_events(rest)[-1] == "[DONE]"

    run(body)


def test_full_queue_answers_503_with_retry_after(tiny_ckpt: Path) -> None:
    async def body() -> None:
        cfg = {"max_batch": 1, "max_queue": 1}
        async with serving(tiny_ckpt, **cfg) as (server, url), aiohttp.ClientSession() as s:
            long_req = {"prompt": "def", "max_tokens": 1000, "stream": True}
            async with s.post(url + "/v1/completions", json=long_req) as r1:
                await r1.content.readline()
                waiting = asyncio.ensure_future(post(s, url + "/v1/completions", long_req))
                await wait_until(lambda: len(server.engine.waiting) == 1)
                st, out, headers = await post(s, url + "/v1/completions", {"prompt": "a"})
                assert st == 503
                assert out["error"]["code"] == "queue_full"
                assert headers["Retry-After"] == "1"
                waiting.cancel()

    run(body)


def test_client_disconnect_mid_stream_frees_the_slot(tiny_ckpt: Path) -> None:
    async def body() -> None:
        async with serving(tiny_ckpt, max_batch=2) as (server, url):
            aborted = server.engine.stats.aborted
            async with aiohttp.ClientSession() as s:
                req = {"prompt": "def", "max_tokens": 1000, "stream": True}
                async with s.post(url + "/v1/completions", json=req) as r:
                    await r.content.readline()
                    assert len(server.engine.running) == 1
            # session closed mid-stream: the engine drops the sequence between two steps
            await wait_until(lambda: not server.engine.running)
            assert server.engine.stats.aborted == aborted + 1
            assert len(server.engine.free_slots) == 2

    run(body)


def test_models_health_and_vllm_metrics(tiny_ckpt: Path) -> None:
    async def body() -> None:
        async with serving(tiny_ckpt, model_name="demo") as (_, url), aiohttp.ClientSession() as s:
            before = (
                REGISTRY.get_sample_value("vllm:generation_tokens_total", {"model": "demo"}) or 0
            )
            await post(s, url + "/v1/completions", {"prompt": "ab", "max_tokens": 4})
            async with s.get(url + "/v1/models") as r:
                models = await r.json()
            assert [m["id"] for m in models["data"]] == ["demo"]
            assert models["data"][0]["max_model_len"] == 32
            async with s.get(url + "/health") as r:
                assert r.status == 200
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            for name in (
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
                "vllm:time_to_first_token_seconds_bucket",
                "vllm:e2e_request_latency_seconds_bucket",
                "vllm:prompt_tokens_total",
                "vllm:generation_tokens_total",
            ):
                lines = [ln for ln in text.splitlines() if ln.startswith(name + "{")]
                assert any('model="demo"' in ln for ln in lines), name
            after = REGISTRY.get_sample_value("vllm:generation_tokens_total", {"model": "demo"})
            assert after == before + 4

    run(body)


def test_checkpoint_paths_resolve_or_explain(tiny_ckpt: Path, tmp_path: Path) -> None:
    step_dir = resolve_checkpoint(tiny_ckpt)
    assert step_dir.name == "step_00000040"
    assert resolve_checkpoint(step_dir) == step_dir
    assert resolve_checkpoint(tiny_ckpt.parent) == step_dir  # the run directory
    with pytest.raises(UsageError, match="no such file"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(UsageError, match=r"neither checkpoint\.pt nor a 'latest'"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(UsageError, match="--max-batch"):
        ServerConfig(checkpoint=str(tiny_ckpt), max_batch=0)
