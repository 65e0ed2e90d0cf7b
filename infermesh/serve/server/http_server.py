"""OpenAI-compatible HTTP front of the engine (aiohttp).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream``: SSE
``data: {...}`` chunks then ``data: [DONE]``), ``GET /v1/models``, ``GET /health`` and
``GET /metrics`` (Prometheus text with vLLM's metric names, so a router scrapes it like a
vLLM server).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infermesh.obs.metrics import REGISTRY
from infermesh.obs.tracing import get_tracer
from infermesh.security.http import https_context
from infermesh.serve._aio import run, until_signal
from infermesh.serve.openai import (
    ApiError,
    CompletionParams,
    parse_completion_body,
    parse_json_body,
)
from infermesh.serve.server.api import LoadedModel, ServerConfig, load_model
from infermesh.serve.server.engine import Engine, Sequence

__all__ = ["ModelServer", "run_server"]

log = logging.getLogger(__name__)
_tracer = get_tracer(__name__)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return _json(e.body(), e.status, e.headers)
    except web.HTTPRequestEntityTooLarge as e:
        msg = f"request body is larger than the limit ({e.text}); send a smaller body"
        return _json(ApiError(413, msg, code="body_too_large").body(), 413)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _json(ApiError(e.status, e.reason, code=str(e.status)).body(), e.status)


class ModelServer:
    """The engine plus its HTTP front; :meth:`start` binds, :meth:`close` drains and stops."""

    def __init__(self, config: ServerConfig, loaded: LoadedModel) -> None:
        self.config = config
        self.loaded = loaded
        self.engine = Engine(
            loaded.model,
            loaded.tokenizer,
            config.model_name,
            max_batch=config.max_batch,
            max_queue=config.max_queue,
            device=loaded.device,
        )
        self.created = int(time.time())
        self.port = 0
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The aiohttp application (routes and the error middleware)."""
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[_errors])
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> int:
        """Start the engine and listen; return the bound port."""
        self.engine.start()
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.config.host,
            self.config.port,
            ssl_context=https_context(self.config.tls_dir),
        )
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.config.port
        if self.config.ready_file:
            tmp = Path(self.config.ready_file + ".tmp")
            tmp.write_text(f"{self.config.host}:{self.port}\n")
            tmp.replace(self.config.ready_file)
        log.info(
            "model server %s on http://%s:%d", self.config.model_name, self.config.host, self.port
        )
        return self.port

    async def close(self) -> None:
        """Stop accepting, end unfinished requests, stop the engine."""
        await self.engine.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ handlers

    async def _health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "model": self.config.model_name})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.config.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "infermesh",
            "root": str(self.loaded.path),
            "max_model_len": self.loaded.model.config.block_size,
        }
        return _json({"object": "list", "data": [card]})

    async def _params(self, request: web.Request, chat: bool) -> CompletionParams:
        body = parse_json_body(await request.read())
        params = parse_completion_body(body, chat, self.config.max_tokens_limit)
        if params.model is not None and params.model != self.config.model_name:
            raise ApiError(
                404,
                f"model {params.model!r} does not exist here; this server serves "
                f"{self.config.model_name!r} (see /v1/models)",
                param="model",
                code="model_not_found",
            )
        return params

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, await self._params(request, chat=False))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, await self._params(request, chat=True))

    async def _generate(self, request: web.Request, params: CompletionParams) -> web.StreamResponse:
        with _tracer.start_as_current_span("serve.generate") as span:
            span.set_attribute("model", self.config.model_name)
            seq = self.engine.submit(params)
            try:
                if params.stream:
                    return await self._stream(request, seq)
                return await self._whole(seq)
            finally:
                self.engine.abort(seq)

    def _envelope(self, seq: Sequence, rid: str) -> dict[str, Any]:
        chat = seq.params.chat
        return {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.config.model_name,
        }

    def _usage(self, seq: Sequence) -> dict[str, int]:
        return {
            "prompt_tokens": seq.prompt_tokens,
            "completion_tokens": seq.generated,
            "total_tokens": seq.prompt_tokens + seq.generated,
        }

    async def _whole(self, seq: Sequence) -> web.Response:
        parts: list[str] = []
        while True:
            delta, reason = await seq.events.get()
            parts.append(delta)
            if reason is not None:
                break
        if reason.startswith("error"):
            raise ApiError(500, f"generation failed ({reason})", "server_error")
        text = "".join(parts)
        rid = ("chatcmpl-" if seq.params.chat else "cmpl-") + uuid.uuid4().hex
        body = self._envelope(seq, rid)
        if seq.params.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        body["choices"] = [choice]
        body["usage"] = self._usage(seq)
        return _json(body)

    async def _stream(self, request: web.Request, seq: Sequence) -> web.StreamResponse:
        # wait for the first event before committing to 200, so early failures stay JSON errors
        first = await seq.events.get()
        if first[1] is not None and first[1].startswith("error"):
            raise ApiError(500, f"generation failed ({first[1]})", "server_error")
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        chat = seq.params.chat
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        base = self._envelope(seq, rid)
        base["object"] = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str, reason: str | None, role: bool = False) -> bytes:
            if chat:
                d: dict[str, Any] = {"role": "assistant"} if role else {}
                if delta or not role:
                    d["content"] = delta
                choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}
            return b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"

        if chat:
            await resp.write(chunk("", None, role=True))
        event = first
        while True:
            delta, reason = event
            if reason is not None and reason.startswith("error"):
                err = ApiError(500, f"generation failed ({reason})", "server_error").body()
                await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
                break
            if delta or reason is not None:
                await resp.write(chunk(delta, reason))
            if reason is not None:
                break
            event = await seq.events.get()
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def _serve_forever(config: ServerConfig, loaded: LoadedModel) -> None:
    server = ModelServer(config, loaded)
    port = await server.start()
    print(
        f"infermesh serve: {config.model_name} (checkpoint {loaded.path}, {loaded.device}) "
        f"on http://{config.host}:{port}",
        flush=True,
    )
    try:
        await until_signal()
    finally:
        await server.close()


def run_server(config: ServerConfig) -> None:
    """Load the checkpoint and serve until SIGINT/SIGTERM (what ``infermesh serve`` runs)."""
    loaded = load_model(config.checkpoint, config.device)
    run(_serve_forever(config, loaded))
