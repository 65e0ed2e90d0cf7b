"""Backend adapters: each runtime's request shape, health path and load metric names.

vLLM, SGLang, TGI (Messages API) and our own model server accept OpenAI requests as they
are; they differ in the Prometheus names of their load signals. Triton's generate extension
takes ``{"text_input", "parameters"}`` at ``/v2/models/NAME/generate[_stream]`` and answers
``{"text_output"}``: its adapter rewrites both ways.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

from infermesh.core.errors import UsageError
from infermesh.serve.openai import CompletionParams

__all__ = ["BackendAdapter", "Load", "adapter", "known_adapters", "parse_load"]


@dataclass(frozen=True, slots=True)
class Load:
    """Load signals read from a backend's /metrics (missing ones are None)."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None


def parse_load(
    text: str, running: tuple[str, ...], waiting: tuple[str, ...], kv: tuple[str, ...]
) -> Load:
    """Sum the samples of the named metrics (over all label sets) in Prometheus text."""
    wanted = {n: i for i, names in enumerate((running, waiting, kv)) for n in names}
    sums: list[float | None] = [None, None, None]
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        end = brace if 0 <= brace < space else space
        i = wanted.get(line[:end])
        if i is None:
            continue
        try:
            rest = line[end:] if brace < 0 else line[line.rindex("}") + 1 :]
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        sums[i] = (sums[i] or 0.0) + value
    return Load(*sums)


class BackendAdapter:
    """What differs between runtimes; the default is an OpenAI passthrough."""

    name: ClassVar[str] = ""
    health_path: ClassVar[str] = "/health"
    models_path: ClassVar[str | None] = "/v1/models"
    running_metrics: ClassVar[tuple[str, ...]] = ()
    waiting_metrics: ClassVar[tuple[str, ...]] = ()
    kv_metrics: ClassVar[tuple[str, ...]] = ()
    #: False when responses must be rewritten (the router then reads them through the adapter)
    passthrough: ClassVar[bool] = True

    def __init__(self, model: str | None = None) -> None:
        self.model = model

    def load(self, metrics_text: str) -> Load:
        """Load signals from the backend's /metrics text."""
        return parse_load(metrics_text, self.running_metrics, self.waiting_metrics, self.kv_metrics)

    def request(self, path: str, body: bytes, params: CompletionParams) -> tuple[str, bytes]:
        """The path and body to send for an OpenAI request (passthrough by default)."""
        return path, body

    def response(self, body: bytes, params: CompletionParams) -> bytes:
        """Rewrite a whole response body into OpenAI form (passthrough by default)."""
        return body

    def event(self, data: bytes, params: CompletionParams) -> bytes:
        """Rewrite one SSE ``data:`` payload into OpenAI form (passthrough by default)."""
        return data


class VllmAdapter(BackendAdapter):
    name = "vllm"
    running_metrics = ("vllm:num_requests_running",)
    waiting_metrics = ("vllm:num_requests_waiting",)
    kv_metrics = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


class InferMeshAdapter(VllmAdapter):
    """Our own model server publishes vLLM's names."""

    name = "infermesh"


class SglangAdapter(BackendAdapter):
    name = "sglang"
    running_metrics = ("sglang:num_running_reqs",)
    waiting_metrics = ("sglang:num_queue_reqs",)
    kv_metrics = ("sglang:token_usage",)


class TgiAdapter(BackendAdapter):
    name = "tgi"
    running_metrics = ("tgi_batch_current_size",)
    waiting_metrics = ("tgi_queue_size",)


class TritonAdapter(BackendAdapter):
    """Triton's generate extension for one model (the model named in the backend URL)."""

    name = "triton"
    health_path = "/v2/health/ready"
    models_path = None
    waiting_metrics = ("nv_inference_pending_request_count",)
    passthrough = False

    def request(self, path: str, body: bytes, params: CompletionParams) -> tuple[str, bytes]:
        suffix = "generate_stream" if params.stream else "generate"
        parameters: dict[str, Any] = {
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": params.stream,
        }
        if params.seed is not None:
            parameters["random_seed"] = params.seed
        if params.stop:
            parameters["stop"] = list(params.stop)
        out = {"text_input": params.prompt, "parameters": parameters}
        return f"/v2/models/{self.model}/{suffix}", json.dumps(out).encode()

    def _envelope(self, params: CompletionParams, text: str, chunk: bool) -> dict[str, Any]:
        if params.chat:
            key = "delta" if chunk else "message"
            choice: dict[str, Any] = {"index": 0, key: {"role": "assistant", "content": text}}
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
            obj = "text_completion"
        choice["finish_reason"] = None if chunk else "length"
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": obj,
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
        }

    def response(self, body: bytes, params: CompletionParams) -> bytes:
        try:
            text = json.loads(body).get("text_output", "")
        except (ValueError, AttributeError):
            return body
        return json.dumps(self._envelope(params, str(text), chunk=False)).encode()

    def event(self, data: bytes, params: CompletionParams) -> bytes:
        try:
            text = json.loads(data).get("text_output", "")
        except (ValueError, AttributeError):
            return data
        return json.dumps(self._envelope(params, str(text), chunk=True)).encode()


_ADAPTERS: dict[str, type[BackendAdapter]] = {
    a.name: a for a in (VllmAdapter, InferMeshAdapter, SglangAdapter, TgiAdapter, TritonAdapter)
}


def known_adapters() -> list[str]:
    """Adapter names, sorted."""
    return sorted(_ADAPTERS)


def adapter(kind: str, model: str | None = None) -> BackendAdapter:
    """The adapter for backend ``kind``."""
    cls = _ADAPTERS.get(kind)
    if cls is None:
        raise UsageError(f"unknown backend kind {kind!r}; known: {', '.join(known_adapters())}")
    return cls(model)
