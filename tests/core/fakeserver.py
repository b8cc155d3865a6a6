"""A fake hosted-model provider on loopback, for tests and the prompt-cache benchmark.

`FakeProvider` runs a stdlib `ThreadingHTTPServer` on `127.0.0.1` (a free port) in a daemon
thread and speaks two wire formats well enough for the official SDKs:

- OpenAI chat completions: `POST /v1/chat/completions` (JSON, or SSE with `stream: true`,
  usage in the last chunk when `stream_options.include_usage` is set).
- Anthropic messages: `POST /v1/messages` (JSON, or the SSE event sequence
  `message_start ... message_stop`).

Replies are deterministic: `"reply to: <the last user text>"`, cut to `max_tokens` words,
or whatever `reply(messages)` returns. Tokens are words and punctuation marks; the reported
prompt tokens are those of the serialized request, or what `prompt_count(messages)` returns
(to play a provider that counts differently from fmai, e.g. 1.5x its estimate).

Other paths (a server's `/tokenize` or `/apply-template`, which fmai probes for exact counts)
get a 404 and are not recorded in `requests`.

Faults are scripted per request with `fail_next(kind, times)`: `"429"` (with `Retry-After`),
`"500"`, `"400"` (the request refused as invalid), `"slow"` (waits `slow_s` before
answering), `"malformed"` (a 200 whose body is not JSON), `"truncate"` (a stream that stops
after two deltas, without its final event), `"stall"` (a stream that goes silent after two
deltas for `slow_s`, then hangs up). A request whose key differs from `api_key` always gets
a 401.

Prefix caching is emulated like providers do it: a request's serialized messages are cut into
blocks of `block_tokens` tokens; the cached prompt tokens are the longest run of whole leading
blocks that an earlier request (any earlier one) also began with, and nothing when that run is
shorter than `min_cached_tokens`. OpenAI reports them in
`usage.prompt_tokens_details.cached_tokens`, Anthropic in `usage.cache_read_input_tokens`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeProvider", "tokens"]

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def tokens(text: str) -> list[str]:
    """The fake provider's tokenizer: words and single punctuation marks."""
    return _TOKEN.findall(text)


class FakeProvider:
    """A loopback fake of the OpenAI and Anthropic HTTP APIs (use it as a context manager).

    Args:
        api_key: The only key accepted; any other gets a 401.
        reply: Optional `messages -> str` replacing the default reply.
        block_tokens: Prefix-cache block size in tokens.
        min_cached_tokens: Prefix-cache hits shorter than this count as misses.
        retry_after: The `Retry-After` value (seconds, may be fractional) sent with a 429.
        slow_s: How long a `"slow"` fault waits before answering.
        prompt_count: Optional `messages -> int` replacing the reported prompt tokens (the
            messages as chat dicts, an Anthropic `system` first as a system message).
    """

    def __init__(
        self,
        api_key: str = "sk-test-key",
        reply: Callable[[list[dict[str, str]]], str] | None = None,
        *,
        block_tokens: int = 64,
        min_cached_tokens: int = 0,
        retry_after: str = "0.05",
        slow_s: float = 3.0,
        prompt_count: Callable[[list[dict[str, str]]], int] | None = None,
    ) -> None:
        self.api_key = api_key
        self.reply = reply
        self.block_tokens = block_tokens
        self.min_cached_tokens = min_cached_tokens
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.prompt_count = prompt_count
        self.requests: list[dict[str, Any]] = []  # every request body, in arrival order
        self.headers: list[dict[str, str]] = []
        self._faults: deque[str] = deque()
        self._prefixes: set[str] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> FakeProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving; slow handlers are released at once."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        """The server's root URL (Anthropic's `base_url`)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_url(self) -> str:
        """The OpenAI-compatible `base_url` (`.../v1`)."""
        return self.url + "/v1"

    # -- scripting ----------------------------------------------------------------------
    def fail_next(self, kind: str, times: int = 1) -> None:
        """Answer the next `times` requests with fault `kind` (see the module docs)."""
        with self._lock:
            self._faults.extend([kind] * times)

    def _next_fault(self) -> str | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def wait(self, seconds: float) -> None:
        """Sleep, but wake at once when the server closes."""
        self._closing.wait(seconds)

    # -- model --------------------------------------------------------------------------
    def serialize(self, system: str, messages: list[dict[str, str]]) -> list[str]:
        """The request as the tokens the provider would feed its model."""
        out: list[str] = []
        if system:
            out += ["<system>", *tokens(system), "<end>"]
        for m in messages:
            out += [f"<{m['role']}>", *tokens(m["content"]), "<end>"]
        return [*out, "<assistant>"]

    def cached_tokens(self, toks: list[str]) -> int:
        """Emulated prefix-cache hit for `toks`, then remember its block prefixes."""
        with self._lock:
            digest = hashlib.sha256()
            hit = 0
            missed = False
            for end in range(self.block_tokens, len(toks) + 1, self.block_tokens):
                digest.update("\x00".join(toks[end - self.block_tokens : end]).encode() + b"\x01")
                key = digest.copy().hexdigest()
                if not missed and key in self._prefixes:
                    hit = end
                else:
                    missed = True
                self._prefixes.add(key)
            return hit if hit >= self.min_cached_tokens else 0

    def reply_text(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        """`reply(messages)` or an echo of the last user text, cut to `max_tokens` words."""
        if self.reply is not None:
            text = self.reply(messages)
        else:
            last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            text = "reply to: " + last
        return " ".join(text.split(" ")[: max(1, max_tokens)])


class _QuietServer(ThreadingHTTPServer):
    """Ignores clients that hang up first (a client-side timeout is what tests provoke).

    Its listen queue holds 1,024 connections (socketserver's default is 5): with 50 clients
    connecting at once, the kernel dropped the SYNs past 5, and each retried after 1 s,
    then 3 s, so a load test saw stalls, and 504s past a 2 s timeout, that were this
    fake's, not the server's under test.
    """

    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        return


def _text_of(content: Any) -> str:
    """Anthropic content may be a string or a list of blocks."""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


def _handler_for(provider: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            path = self.path.rstrip("/")
            if not path.endswith(("/chat/completions", "/messages")):
                # no token-counting endpoints here (/tokenize, /apply-template): a 404, as
                # from OpenAI itself; not recorded, so tests see only the model requests
                return self._json(404, _error(False, "not_found", f"no route {self.path}"))
            provider.requests.append(body)
            provider.headers.append({k.lower(): v for k, v in self.headers.items()})
            anthropic = self.path.rstrip("/").endswith("/messages")
            bearer = (self.headers.get("authorization") or "").removeprefix("Bearer ")
            key = (self.headers.get("x-api-key") or bearer) if anthropic else bearer
            if key != provider.api_key:
                return self._json(401, _error(anthropic, "authentication_error", "invalid key"))
            fault = provider._next_fault()
            if fault == "429":
                extra = {"retry-after": provider.retry_after}
                return self._json(429, _error(anthropic, "rate_limit_error", "slow down"), extra)
            if fault == "500":
                return self._json(500, _error(anthropic, "api_error", "internal error"))
            if fault == "400":  # the request itself refused (an unknown parameter, say)
                kind = "invalid_request_error"
                return self._json(400, _error(anthropic, kind, "unrecognized parameter"))
            if fault == "slow":
                provider.wait(provider.slow_s)
            if fault == "malformed":
                return self._raw(200, b'{"id": "x", "choices": [ {not json', "application/json")
            system = _text_of(body.get("system", "")) if anthropic else ""
            msgs = [
                {"role": m["role"], "content": _text_of(m["content"])} for m in body["messages"]
            ]
            toks = provider.serialize(system, msgs)
            cached = provider.cached_tokens(toks)
            prompt = len(toks)
            if provider.prompt_count is not None:
                head = [{"role": "system", "content": system}] if system else []
                prompt = provider.prompt_count([*head, *msgs])
                cached = min(cached, prompt)
            limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
            text = provider.reply_text(msgs, limit)
            fmt = _anthropic_events if anthropic else _openai_chunks
            if body.get("stream"):
                events = list(fmt(body, text, prompt, cached))
                if fault in ("truncate", "stall"):
                    events = events[:3]
                return self._sse(events, close_early=fault in ("truncate", "stall"), stall=fault)
            whole = _anthropic_message if anthropic else _openai_completion
            return self._json(200, whole(body, text, prompt, cached))

        def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
            self._raw(status, json.dumps(data).encode(), "application/json", headers)

        def _raw(
            self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _sse(self, events: list[str], *, close_early: bool, stall: str | None) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for event in events:
                data = event.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            if stall == "stall":  # stop sending mid-stream
                provider.wait(provider.slow_s)
            if close_early:  # drop the connection without the terminating chunk
                self.close_connection = True
                return
            self.wfile.write(b"0\r\n\r\n")

    return Handler


def _error(anthropic: bool, kind: str, message: str) -> dict[str, Any]:
    if anthropic:
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "code": None}}


def _split(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _openai_usage(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _openai_completion(body: dict[str, Any], text: str, prompt: int, cached: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": _openai_usage(prompt, cached, len(tokens(text))),
    }


def _openai_chunks(body: dict[str, Any], text: str, prompt: int, cached: int) -> Iterator[str]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0}
    base["model"] = body["model"]

    def event(choices: list[Any], usage: Any = None) -> str:
        return "data: " + json.dumps({**base, "choices": choices, "usage": usage}) + "\n\n"

    yield event(
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    )
    for piece in _split(text):
        yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
    yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if (body.get("stream_options") or {}).get("include_usage"):
        yield event([], _openai_usage(prompt, cached, len(tokens(text))))
    yield "data: [DONE]\n\n"


def _anthropic_usage(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt - cached,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": completion,
    }


def _anthropic_message(body: dict[str, Any], text: str, prompt: int, cached: int) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(prompt, cached, len(tokens(text))),
    }


def _anthropic_events(body: dict[str, Any], text: str, prompt: int, cached: int) -> Iterator[str]:
    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

    start = _anthropic_message(body, "", prompt, cached)
    start["content"], start["stop_reason"] = [], None
    start["usage"]["output_tokens"] = 1
    yield event("message_start", {"message": start})
    yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    for piece in _split(text):
        yield event(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}}
        )
    yield event("content_block_stop", {"index": 0})
    usage = {"output_tokens": len(tokens(text))}
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    yield event("message_delta", {"delta": delta, "usage": usage})
    yield event("message_stop", {})
