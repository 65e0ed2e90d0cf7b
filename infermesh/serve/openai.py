"""OpenAI wire format shared by the model server and the router: errors and request parsing.

Errors follow OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; a bad
field is named in ``param`` and in the message, with the expected form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ApiError",
    "CompletionParams",
    "chat_prompt",
    "error_body",
    "parse_completion_body",
    "parse_json_body",
]


class ApiError(Exception):
    """An error answered to an HTTP client in OpenAI's error format."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object (400 naming the problem otherwise)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(
            400, f"request body is not valid JSON ({e}); send a JSON object", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(
            400,
            f"request body must be a JSON object, got {type(body).__name__}",
            code="invalid_json",
        )
    return body


@dataclass(frozen=True, slots=True)
class CompletionParams:
    """The fields of a completion or chat request that the server and router use."""

    model: str | None
    prompt: str
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    chat: bool
    extra: dict[str, Any] = field(default_factory=dict)


_ROLES = ("system", "user", "assistant", "tool", "developer")


def chat_prompt(messages: Any) -> str:
    """Flatten chat ``messages`` into one prompt: ``role: content`` lines, then ``assistant:``."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400,
            "'messages' must be a non-empty list of {role, content} objects",
            param="messages",
        )
    lines = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param=f"messages[{i}]")
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES:
            raise ApiError(
                400,
                f"messages[{i}].role is {role!r}; expected one of {', '.join(_ROLES)}",
                param=f"messages[{i}].role",
            )
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if not isinstance(content, str):
            raise ApiError(
                400, f"messages[{i}].content must be a string", param=f"messages[{i}].content"
            )
        lines.append(f"{role}: {content}\n")
    return "".join(lines) + "assistant:"


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"'{name}' must be a number, got {value!r}", param=name)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be in [{lo}, {hi}], got {value!r}", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer, got {value!r}", param=name)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be in [{lo}, {hi}], got {value!r}", param=name)
    return value


def parse_completion_body(
    body: dict[str, Any], chat: bool, max_tokens_limit: int = 4096, default_max_tokens: int = 16
) -> CompletionParams:
    """Validate a ``/v1/completions`` (``chat=False``) or ``/v1/chat/completions`` body."""
    if chat:
        prompt = chat_prompt(body.get("messages"))
    else:
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
            raw = raw[0]
        if not isinstance(raw, str):
            raise ApiError(
                400,
                f"'prompt' must be a string (or a list of one string), got {type(raw).__name__}",
                param="prompt",
            )
        prompt = raw
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, got {model!r}", param="model")
    name = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = _integer(body, name, None, 1, max_tokens_limit) or default_max_tokens
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise ApiError(400, "'top_p' must be > 0 (use temperature 0 for greedy)", param="top_p")
    seed = _integer(body, "seed", None, -(2**63), 2**63 - 1)
    if body.get("n", 1) not in (1, None):
        raise ApiError(400, f"'n' must be 1 (one choice per request), got {body['n']!r}", param="n")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= 4:
        stops = tuple(stop)
    else:
        raise ApiError(
            400, "'stop' must be a non-empty string or a list of up to 4 of them", param="stop"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be true or false, got {stream!r}", param="stream")
    return CompletionParams(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stops,
        seed=seed,
        stream=stream,
        chat=chat,
    )
