"""The OpenAI wire format of `fmai serve`: requests in, completions, chunks and errors out."""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fmai_core.errors import (
    AuthenticationError,
    BackendError,
    BackendTimeoutError,
    CheckpointError,
    ConfigurationError,
    FMAIError,
    InvalidMessageError,
    MessageTooLongError,
    RateLimitError,
    RequestRejectedError,
)
from fmai_core.messages import Role

__all__ = [
    "ApiError",
    "ChatRequest",
    "chunk",
    "completion",
    "error_body",
    "from_fmai_error",
    "parse_chat_request",
    "usage",
]

#: Conversation ids: letters, digits and `. _ : @ + -`, 1 to 200 characters.
ID_PATTERN = re.compile(r"[A-Za-z0-9._:@+\-]{1,200}")
_ROLES = ("system", "developer", "user", "assistant")
#: Request fields passed on to the model as generation parameters.
_PARAMS = ("temperature", "top_p", "seed", "stop")
#: Most stop strings a request may carry, and most characters in one (OpenAI takes 4; other
#: OpenAI-compatible servers take more; every one is matched against the reply as it grows).
MAX_STOPS = 16
MAX_STOP_CHARS = 512


class ApiError(Exception):
    """An error answered in OpenAI's JSON shape: `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param = code, param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return error_body(self.message, self.type, self.code, self.param)


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_fmai_error(exc: FMAIError) -> ApiError:
    """The HTTP answer to an fmai error (every one of them leaves memory unchanged)."""
    text = str(exc)
    if isinstance(exc, MessageTooLongError):
        return ApiError(400, text, code="context_length_exceeded", param="messages")
    if isinstance(exc, (InvalidMessageError, ConfigurationError)):
        return ApiError(400, text, code="invalid_value")
    if isinstance(exc, RateLimitError):
        return ApiError(
            429,
            f"The upstream model is rate limited: {text}",
            type="rate_limit_error",
            code="upstream_rate_limited",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, BackendTimeoutError):
        return ApiError(
            504, f"The upstream model timed out: {text}", type="api_error", code="upstream_timeout"
        )
    if isinstance(exc, AuthenticationError):
        return ApiError(
            502,
            f"The upstream model refused fmai's key: {text}",
            type="api_error",
            code="upstream_auth",
        )
    if isinstance(exc, RequestRejectedError):  # the same request would be refused again
        return ApiError(
            400, f"The upstream model rejected the request: {text}", code="upstream_rejected"
        )
    if isinstance(exc, BackendError):
        return ApiError(
            502, f"The upstream model failed: {text}", type="api_error", code="upstream_error"
        )
    if isinstance(exc, CheckpointError):
        return ApiError(409, text, type="conflict_error", code="checkpoint_mismatch")
    return ApiError(500, text, type="server_error", code=type(exc).__name__)


@dataclass
class ChatRequest:
    """A parsed `POST /v1/chat/completions` body.

    Attributes:
        system: The leading system/developer messages' text, joined (`None`: none sent).
        history: The (role, content) messages before the new one, system messages excluded.
        message: The new user message: the request's last message.
        stream: Whether to answer with server-sent events.
        include_usage: `stream_options.include_usage`.
        max_new_tokens: `max_completion_tokens` or `max_tokens` (`None`: the server's).
        params: Generation parameters (`temperature`, `top_p`, `seed`, `stop`).
        metadata_id: `metadata.conversation_id`, if sent.
        user: `user`, if sent.
        model: The requested model name.
    """

    system: str | None
    history: list[tuple[Role, str]]
    message: str
    stream: bool = False
    include_usage: bool = False
    max_new_tokens: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metadata_id: str | None = None
    user: str | None = None
    model: str = ""


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(
                    400,
                    f"{where}: content part of type {kind!r} is not supported; "
                    "fmai serve takes text only.",
                    param="messages",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(
                    400, f"{where}: a text part needs a string 'text'.", param="messages"
                )
            parts.append(text)
        return "".join(parts)
    raise ApiError(
        400, f"{where}: content must be a string or a list of text parts.", param="messages"
    )


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a request body; raise `ApiError` (400) saying what is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, too deep, too many digits
        raise ApiError(400, f"The request body is not valid JSON ({exc}).") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages")
    n = body.get("n")
    if n not in (None, 1):
        raise ApiError(400, "Only n=1 is supported.", param="n")
    if body.get("tools") or body.get("functions"):
        raise ApiError(400, "Tools and functions are not supported by fmai serve.", param="tools")
    parsed: list[tuple[Role, str]] = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object.", param="messages")
        role = m.get("role")
        if role not in _ROLES:
            raise ApiError(
                400,
                f"{where}: unknown role {role!r}; use one of {', '.join(_ROLES)}.",
                param="messages",
            )
        content = _content(m.get("content"), where)
        if "\x00" in content:
            raise ApiError(
                400,
                f"{where} holds a NUL character (U+0000), which the conversation store "
                "cannot keep: remove it. Nothing was changed.",
                param="messages",
            )
        parsed.append(("system" if role == "developer" else role, content))
    head = 0
    while head < len(parsed) and parsed[head][0] == "system":
        head += 1
    system = "\n\n".join(c for _, c in parsed[:head] if c.strip()) or None
    rest = parsed[head:]
    if any(role == "system" for role, _ in rest):
        raise ApiError(
            400,
            "System messages must come before the conversation's first user message.",
            param="messages",
        )
    if not rest or rest[-1][0] != "user":
        raise ApiError(400, "The last message must be the new user message.", param="messages")
    req = ChatRequest(system=system, history=rest[:-1], message=rest[-1][1])
    req.model = str(body.get("model") or "")
    req.stream = _flag(body.get("stream"), "stream", "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object.", param="stream_options")
    usage_flag = (stream_options or {}).get("include_usage")
    req.include_usage = _flag(usage_flag, "stream_options.include_usage", "stream_options")
    # a field sent as null is as good as absent (a client may fill every field)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ApiError(
                400,
                f"max_tokens must be a whole number of at least 1, got {limit!r}.",
                param="max_tokens",
            )
        req.max_new_tokens = limit
    req.params = {k: _param(k, body[k]) for k in _PARAMS if body.get(k) is not None}
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("conversation_id") is not None:
        req.metadata_id = str(metadata["conversation_id"])
    if body.get("user") is not None:
        req.user = str(body["user"])
    return req


def _flag(value: Any, name: str, param: str) -> bool:
    """A boolean field (`None`: false), else `ApiError` 400: "false" is not false."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {value!r}.", param=param)
    return value


def _param(name: str, value: Any) -> Any:
    """A generation parameter checked (else `ApiError` 400): the upstream gets only these."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in ("temperature", "top_p"):
        if not number or not math.isfinite(value) or value < 0:
            raise ApiError(
                400, f"{name} must be a number of at least 0, got {value!r}.", param=name
            )
    elif name == "seed":
        if (
            not number
            or not math.isfinite(value)
            or value != int(value)
            or not -(2**63) <= int(value) < 2**63
        ):
            raise ApiError(
                400,
                f"seed must be a whole number from -2**63 to 2**63-1 (64 bits), got {value!r}.",
                param=name,
            )
        value = int(value)
    elif name == "stop":
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(x, str) for x in stops):
            raise ApiError(
                400, f"stop must be a string or a list of strings, got {value!r}.", param=name
            )
        if len(stops) > MAX_STOPS:
            raise ApiError(
                400,
                f"stop takes at most {MAX_STOPS} strings, got {len(stops)}. Nothing was changed.",
                param=name,
            )
        for stop in stops:
            if not stop or len(stop) > MAX_STOP_CHARS:
                raise ApiError(
                    400,
                    f"each stop string must hold 1 to {MAX_STOP_CHARS} characters, got "
                    f"{len(stop)}: an empty one would end every reply before it starts. "
                    "Nothing was changed.",
                    param=name,
                )
            try:
                stop.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    400,
                    f"stop holds a lone surrogate ({stop!r}), which cannot be encoded as UTF-8 "
                    "and so cannot be sent to the model: remove it. Nothing was changed.",
                    param=name,
                ) from None
    return value


def check_id(cid: str) -> str:
    """A valid conversation id, or `ApiError` 400.

    Ids of dots only (`.`, `..`) are refused: clients resolve them out of a URL path, so
    `/v1/conversations/{id}` could never reach such a conversation.
    """
    if not ID_PATTERN.fullmatch(cid) or not cid.strip("."):
        raise ApiError(
            400,
            "A conversation id has 1 to 200 letters, digits or . _ : @ + - (not dots only).",
            param="X-Session-ID",
        )
    return cid


def usage(stats: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI usage from a `TurnStats` dict; the reused tokens are the cached ones."""
    prompt, completion = stats["prompt_tokens"], stats["completion_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": stats.get("reused_tokens") or 0},
    }


def new_id() -> str:
    """A completion id."""
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion(
    cid: str, model: str, text: str, finish: str, stats: Mapping[str, Any], session: str | None
) -> dict[str, Any]:
    """A `chat.completion` object; `fmai` holds the turn's stats and conversation id."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": usage(stats),
        "fmai": {"conversation_id": session, "turn_stats": dict(stats)},
    }


def chunk(
    cid: str,
    model: str,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    **extra: Any,
) -> str:
    """One SSE event of a `chat.completion.chunk` (no choice when `delta` is `None`)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    data = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }
    return "data: " + json.dumps(data, ensure_ascii=False) + "\n\n"
