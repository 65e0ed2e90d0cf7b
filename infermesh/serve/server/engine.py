"""Continuous-batching generation engine for :class:`~infermesh.models.tiny_gpt.TinyGPT`.

One asyncio task owns the decode loop. Between two decode steps it drops cancelled
sequences, admits waiting ones into free batch slots and frees the slots of finished ones,
so requests join and leave the running batch at token granularity. The tensor work of a
step runs in one worker thread (torch releases the GIL), so the event loop keeps serving
HTTP while the model computes.

Each batch slot owns a region of a preallocated key/value cache (``max_batch`` slots x
``block_size`` positions per layer). A new sequence is prefilled (its prompt in one forward
pass, right-padded with the others admitted in the same step; the causal mask makes padding
harmless), then decoded one token per step reading its cached keys and values. A sequence
whose context reaches ``block_size`` continues like :meth:`TinyGPT.generate` does: every
later token is computed from the last ``block_size`` tokens by a full forward pass (all such
sequences share one batched pass, as they have the same length).

Sequence states::

    WAITING --admitted into a free slot--> RUNNING --max_tokens / stop string--> FINISHED
       |                                      |
       +-----------client gone (abort)--------+--------------------------------> ABORTED
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from infermesh.models.tiny_gpt import CharTokenizer, TinyGPT
from infermesh.obs import metrics
from infermesh.serve.openai import ApiError, CompletionParams

__all__ = ["Engine", "EngineStats", "SeqState", "Sequence"]

log = logging.getLogger(__name__)

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 20.0, 60.0)

RUNNING = metrics.gauge("vllm:num_requests_running", "Requests in the running batch", ("model",))
WAITING = metrics.gauge("vllm:num_requests_waiting", "Requests waiting for a slot", ("model",))
KV_USAGE = metrics.gauge(
    "vllm:kv_cache_usage_perc", "Fraction of KV-cache positions in use (0..1)", ("model",)
)
TTFT = metrics.histogram(
    "vllm:time_to_first_token_seconds", "Arrival to first token", ("model",), _TTFT_BUCKETS
)
E2E = metrics.histogram(
    "vllm:e2e_request_latency_seconds", "Arrival to last token", ("model",), _E2E_BUCKETS
)
PROMPT_TOKENS = metrics.counter("vllm:prompt_tokens", "Prompt tokens processed", ("model",))
GEN_TOKENS = metrics.counter("vllm:generation_tokens", "Tokens generated", ("model",))
SUCCESS = metrics.counter("vllm:request_success", "Requests finished", ("model",))


class SeqState(str, enum.Enum):
    """Lifecycle of one request in the engine (transitions in the module docstring)."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False)
class Sequence:
    """One request being generated; ``events`` yields ``(text_delta, finish_reason)``."""

    seq_id: int
    params: CompletionParams
    prompt_ids: list[int]
    generator: torch.Generator
    arrival: float
    events: asyncio.Queue[tuple[str, str | None]] = field(default_factory=asyncio.Queue)
    state: SeqState = SeqState.WAITING
    slot: int = -1
    ids: list[int] = field(default_factory=list)
    cached: int = 0
    text: str = ""
    emitted: int = 0
    generated: int = 0
    first_token_at: float | None = None
    finish_reason: str | None = None

    @property
    def prompt_tokens(self) -> int:
        """Number of prompt tokens (before any cropping to the model's context)."""
        return len(self.prompt_ids)


@dataclass
class EngineStats:
    """Counters a test or benchmark can read: steps and the largest batch seen."""

    steps: int = 0
    max_batch_seen: int = 0
    finished: int = 0
    aborted: int = 0


class Engine:
    """Owns the model, the KV cache and the decode loop (start with :meth:`start`)."""

    def __init__(
        self,
        model: TinyGPT,
        tokenizer: CharTokenizer,
        model_name: str,
        max_batch: int = 8,
        max_queue: int = 64,
        device: str = "cpu",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.device = torch.device(device)
        cfg = model.config
        self.block = cfg.block_size
        hd = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, max_batch, cfg.n_head, cfg.block_size, hd)
        dtype = next(model.parameters()).dtype
        self.k_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        self.positions = torch.arange(cfg.block_size, device=self.device)
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.free_slots = list(range(max_batch - 1, -1, -1))
        self.stats = EngineStats()
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._closed = False
        lab = {"model": model_name}
        self._running = RUNNING.labels(**lab)
        self._waiting = WAITING.labels(**lab)
        self._kv = KV_USAGE.labels(**lab)
        self._ttft = TTFT.labels(**lab)
        self._e2e = E2E.labels(**lab)
        self._prompt = PROMPT_TOKENS.labels(**lab)
        self._gen = GEN_TOKENS.labels(**lab)
        self._ok = SUCCESS.labels(**lab)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the decode loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="engine-loop")

    async def close(self) -> None:
        """Stop the loop; every unfinished sequence ends with finish reason ``abort``."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
        for seq in [*self.running, *self.waiting]:
            self._finish(seq, "abort", SeqState.ABORTED)
        self.waiting.clear()
        self._pool.shutdown(wait=True)

    # ---------------------------------------------------------------- requests

    def submit(self, params: CompletionParams) -> Sequence:
        """Queue a request; raises :class:`ApiError` 503 when the waiting queue is full."""
        if self._closed:
            raise ApiError(503, "server is shutting down", "server_error", code="shutting_down")
        if len(self.waiting) >= self.max_queue and len(self.running) >= self.max_batch:
            raise ApiError(
                503,
                f"server is at capacity ({self.max_batch} running, {len(self.waiting)} waiting, "
                f"--max-queue {self.max_queue}); retry later or add replicas",
                "server_overloaded",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        if not params.prompt:
            raise ApiError(400, "'prompt' is empty; send at least one character", param="prompt")
        gen = torch.Generator()
        gen.manual_seed(params.seed if params.seed is not None else torch.seed())
        seq = Sequence(
            seq_id=next(self._ids),
            params=params,
            prompt_ids=self.tokenizer.encode(params.prompt),
            generator=gen,
            arrival=time.perf_counter(),
        )
        seq.ids = list(seq.prompt_ids)
        self.waiting.append(seq)
        self._waiting.set(len(self.waiting))
        self._wake.set()
        return seq

    def abort(self, seq: Sequence) -> None:
        """Stop generating ``seq`` (client gone); its slot is freed before the next step."""
        if seq.state in (SeqState.WAITING, SeqState.RUNNING):
            seq.finish_reason = "abort"

    # ---------------------------------------------------------------- the loop

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._reap_aborted()
            new: list[Sequence] = []
            while self.waiting and self.free_slots:
                seq = self.waiting.popleft()
                seq.slot = self.free_slots.pop()
                seq.state = SeqState.RUNNING
                self.running.append(seq)
                new.append(seq)
            if not self.running:
                self._publish()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._publish()
            batch = list(self.running)
            try:
                tokens = await loop.run_in_executor(self._pool, self._step, batch, new)
            except Exception as e:  # a model failure ends these requests, not the server
                log.exception("decode step failed")
                for seq in batch:
                    seq.events.put_nowait(("", f"error: {type(e).__name__}: {e}"))
                    self._release(seq, SeqState.ABORTED)
                continue
            self.stats.steps += 1
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
            now = time.perf_counter()
            for seq, tok in zip(batch, tokens, strict=True):
                self._advance(seq, tok, now)
        self._publish()

    def _reap_aborted(self) -> None:
        for seq in [s for s in self.running if s.finish_reason == "abort"]:
            self._release(seq, SeqState.ABORTED)
        if any(s.finish_reason == "abort" for s in self.waiting):
            for seq in [s for s in self.waiting if s.finish_reason == "abort"]:
                seq.state = SeqState.ABORTED
                self.stats.aborted += 1
            self.waiting = collections.deque(s for s in self.waiting if s.state is SeqState.WAITING)

    def _publish(self) -> None:
        self._running.set(len(self.running))
        self._waiting.set(len(self.waiting))
        used = sum(min(s.cached, self.block) for s in self.running)
        self._kv.set(used / (self.max_batch * self.block))

    def _advance(self, seq: Sequence, tok: int, now: float) -> None:
        if seq.finish_reason == "abort":
            return
        seq.ids.append(tok)
        seq.generated += 1
        self._gen.inc()
        if seq.first_token_at is None:
            seq.first_token_at = now
            self._ttft.observe(now - seq.arrival)
        seq.text += self.tokenizer.decode([tok])
        stops = seq.params.stop
        if stops:
            cut = _find_stop(seq.text, stops, len(seq.text) - 1)
            if cut >= 0:
                self._emit(seq, seq.text[:cut])
                seq.text = seq.text[:cut]
                self._finish(seq, "stop", SeqState.FINISHED)
                return
        if seq.generated >= seq.params.max_tokens:
            self._emit(seq, seq.text)
            self._finish(seq, "length", SeqState.FINISHED)
            return
        self._emit(seq, seq.text[: len(seq.text) - _held_back(seq.text, stops)])

    def _emit(self, seq: Sequence, upto: str) -> None:
        if len(upto) > seq.emitted:
            seq.events.put_nowait((upto[seq.emitted :], None))
            seq.emitted = len(upto)

    def _finish(self, seq: Sequence, reason: str, state: SeqState) -> None:
        seq.finish_reason = reason
        if state is SeqState.FINISHED:
            self._e2e.observe(time.perf_counter() - seq.arrival)
            self._prompt.inc(seq.prompt_tokens)
            self._ok.inc()
            self.stats.finished += 1
        seq.events.put_nowait(("", reason))
        self._release(seq, state)

    def _release(self, seq: Sequence, state: SeqState) -> None:
        if state is SeqState.ABORTED and seq.state is not SeqState.ABORTED:
            self.stats.aborted += 1
        seq.state = state
        if seq in self.running:
            self.running.remove(seq)
            self.free_slots.append(seq.slot)
            seq.slot = -1

    # ---------------------------------------------------------------- tensor work (thread)

    @torch.no_grad()
    def _step(self, batch: list[Sequence], new: list[Sequence]) -> list[int]:
        """One decode step for ``batch`` (prefill for ``new``); returns one token per seq."""
        logits: dict[int, torch.Tensor] = {}
        fresh = {id(s) for s in new}
        prefill = [s for s in batch if id(s) in fresh and len(s.ids) <= self.block]
        window = [s for s in batch if len(s.ids) > self.block or (s.cached >= self.block)]
        decode = [s for s in batch if id(s) not in fresh and s not in window]
        if prefill:
            for s, row in zip(prefill, self._prefill(prefill), strict=True):
                logits[id(s)] = row
        if decode:
            for s, row in zip(decode, self._decode(decode), strict=True):
                logits[id(s)] = row
        if window:
            idx = torch.tensor([s.ids[-self.block :] for s in window], device=self.device)
            out, _ = self.model(idx)
            for s, row in zip(window, out[:, -1, :], strict=True):
                logits[id(s)] = row
                s.cached = self.block
        return [_sample(logits[id(s)], s.params, s.generator) for s in batch]

    def _prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        m = self.model
        lengths = [len(s.ids) for s in seqs]
        width = max(lengths)
        idx = torch.zeros((len(seqs), width), dtype=torch.long, device=self.device)
        for i, s in enumerate(seqs):
            idx[i, : lengths[i]] = torch.tensor(s.ids, device=self.device)
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        x = m.tok_emb(idx) + m.pos_emb(self.positions[:width])
        blocks: list[Any] = list(m.blocks)
        for layer, block in enumerate(blocks):
            attn = block.attn
            b, t, c = x.shape
            q, k, v = attn.qkv(block.ln1(x)).split(c, dim=2)
            q, k, v = (
                z.view(b, t, attn.n_head, c // attn.n_head).transpose(1, 2) for z in (q, k, v)
            )
            self.k_cache[layer, slots, :, :width] = k
            self.v_cache[layer, slots, :, :width] = v
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + attn.proj(y.transpose(1, 2).contiguous().view(b, t, c))
            x = x + block.mlp(block.ln2(x))
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        h = x[torch.arange(len(seqs), device=self.device), last]
        for s, n in zip(seqs, lengths, strict=True):
            s.cached = n
        return m.head(m.ln_f(h))

    def _decode(self, seqs: list[Sequence]) -> torch.Tensor:
        m = self.model
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        pos = torch.tensor([s.cached for s in seqs], device=self.device)
        tok = torch.tensor([s.ids[-1] for s in seqs], device=self.device)
        x = (m.tok_emb(tok) + m.pos_emb(pos)).unsqueeze(1)
        mask = (self.positions[None, :] <= pos[:, None])[:, None, None, :]
        blocks: list[Any] = list(m.blocks)
        for layer, block in enumerate(blocks):
            attn = block.attn
            b, t, c = x.shape
            q, k, v = attn.qkv(block.ln1(x)).split(c, dim=2)
            q, k, v = (
                z.view(b, t, attn.n_head, c // attn.n_head).transpose(1, 2) for z in (q, k, v)
            )
            self.k_cache[layer, slots, :, pos] = k[:, :, 0, :]
            self.v_cache[layer, slots, :, pos] = v[:, :, 0, :]
            keys = self.k_cache[layer, slots]
            values = self.v_cache[layer, slots]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + attn.proj(y.transpose(1, 2).contiguous().view(b, t, c))
            x = x + block.mlp(block.ln2(x))
        for s in seqs:
            s.cached += 1
        return m.head(m.ln_f(x[:, 0, :]))


def _sample(logits: torch.Tensor, params: CompletionParams, gen: torch.Generator) -> int:
    """Greedy at temperature 0, else temperature + nucleus (top_p) sampling with ``gen``."""
    if params.temperature == 0.0:
        return int(logits.argmax())
    probs = F.softmax(logits.float() / params.temperature, dim=-1).cpu()
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = (sorted_p.cumsum(0) - sorted_p) < params.top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=gen))


def _find_stop(text: str, stops: tuple[str, ...], new_from: int) -> int:
    """Index of the earliest stop string that ends in ``text[new_from:]`` (-1 if none)."""
    best = -1
    for stop in stops:
        i = text.find(stop, max(0, new_from - len(stop) + 1))
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could still start a stop string (not streamed yet)."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    return held
