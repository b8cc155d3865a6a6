"""A loopback stand-in for llama.cpp's `llama-server`, for tests of exact hosted budgets.

`FakeLlamaServer` is not fmai's idea of a server: it counts with a real tokenizer and the
real chat template of the embedded model, the way `llama-server` does.

- **Template**: SmolLM2's ChatML, with its default system prompt ("You are a helpful AI
  assistant named SmolLM, trained by Hugging Face") when the messages have no system message,
  and the generation prompt `<|im_start|>assistant\\n`.
- **Tokenizer**: a byte-level BPE trained here with the `tokenizers` package on
  `corpus` (special tokens `<|im_start|>` and `<|im_end|>`); where `tokenizers` is not
  installed, a deterministic tokenizer of its own (special tokens, runs of spaces, word
  pieces of at most 4 characters, single symbols), which is not fmai's estimate either.
- **Usage** as llama-server reports it: `prompt_tokens` (the templated prompt, tokenized with
  special tokens parsed), `completion_tokens`, and `prompt_tokens_details.cached_tokens`: the
  longest common token prefix with what the slot holds (the previous prompt and its reply),
  at most all but one token of the prompt. A stream carries usage only when the request asks
  for `stream_options.include_usage` (in a last chunk with no choices).
- **Endpoints** at the root, as llama-server has them: `POST /tokenize` (`content`,
  `add_special`, `parse_special`, `with_pieces`; no `content`: `{"tokens": []}`) and
  `POST /apply-template` (`messages` -> `prompt`). With `counting=False` both answer 404
  (llama-cpp-python's server and Ollama have neither).
- **Context**: a prompt longer than `n_ctx` tokens gets HTTP 400 like llama-server's
  "exceeds the available context size".

Other switches play other servers: `stream_usage=False` ignores `include_usage`
(llama-cpp-python), `report_cached=False` leaves `prompt_tokens_details` out.
Every chat request's prompt length (by this server's count) and `max_tokens` are kept in
`served` for the tests to check against the budget.
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["DEFAULT_SYSTEM", "FakeLlamaServer", "Served", "chatml"]

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SPECIAL = ("<|im_start|>", "<|im_end|>")


def chatml(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """SmolLM2-135M-Instruct's chat template (its `chat_template.jinja`), in Python."""
    out = []
    if messages and messages[0]["role"] != "system":
        out.append(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    for m in messages:
        out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL) + ")")
_OWN_PIECE = re.compile(r" +|\n|\t|[^\W\d_]{1,4}|\d|[^\w\s]|\s", re.UNICODE)


class _OwnTokenizer:
    """A deterministic tokenizer for when `tokenizers` is absent (not fmai's estimate)."""

    def encode(self, text: str, parse_special: bool = True) -> list[int]:
        ids: list[int] = []
        parts = _SPECIAL_RE.split(text) if parse_special else [text]
        for part in parts:
            if parse_special and part in SPECIAL:
                ids.append(SPECIAL.index(part))
                continue
            ids += [2 + zlib.crc32(p.encode()) % 50_000 for p in _OWN_PIECE.findall(part)]
        return ids

    def piece(self, token: int) -> str:
        return "?"


class _BPE:
    """A byte-level BPE trained on `corpus` with the `tokenizers` package."""

    def __init__(self, corpus: Iterable[str], vocab_size: int) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(list(corpus), trainer=trainer)
        self.tok = tok
        self.special = {s: tok.token_to_id(s) for s in SPECIAL}

    def encode(self, text: str, parse_special: bool = True) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def piece(self, token: int) -> str:
        return str(self.tok.id_to_token(token))


def make_tokenizer(corpus: Iterable[str], vocab_size: int = 4000) -> Any:
    """The BPE tokenizer when `tokenizers` is installed, else the fallback tokenizer."""
    try:
        return _BPE(corpus, vocab_size)
    except ImportError:
        return _OwnTokenizer()


@dataclass(frozen=True)
class Served:
    """One chat request as the server saw it."""

    prompt_tokens: int
    max_tokens: int
    cached_tokens: int
    stream: bool
    messages: list[dict[str, str]]


class FakeLlamaServer:
    """See the module docs. Use as a context manager; `base_url` is the `/v1` URL.

    Args:
        corpus: Texts the BPE is trained on (the tests' conversation, so words are whole).
        reply: `messages -> str`; the default echoes the last user message.
        n_ctx: The context size; longer prompts get HTTP 400.
        counting: Serve `/tokenize` and `/apply-template`.
        stream_usage: Honour `stream_options.include_usage`.
        report_cached: Report `prompt_tokens_details.cached_tokens`.
        vocab_size: The BPE's vocabulary size.
    """

    def __init__(
        self,
        corpus: Iterable[str] = (),
        reply: Callable[[list[dict[str, str]]], str] | None = None,
        *,
        n_ctx: int = 8192,
        counting: bool = True,
        stream_usage: bool = True,
        report_cached: bool = True,
        vocab_size: int = 4000,
    ) -> None:
        base = [DEFAULT_SYSTEM, "reply to: the message", *corpus]
        self.tokenizer = make_tokenizer(base, vocab_size)
        self.reply = reply
        self.n_ctx = n_ctx
        self.counting = counting
        self.stream_usage = stream_usage
        self.report_cached = report_cached
        self.served: list[Served] = []
        self.counting_requests = 0
        self._slot: list[int] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def __enter__(self) -> FakeLlamaServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    # -- the model's side ---------------------------------------------------------------
    def count(self, messages: list[dict[str, str]]) -> int:
        """This server's prompt length for `messages` (template and generation prompt)."""
        return len(self.tokenizer.encode(chatml(messages)))

    def count_text(self, text: str) -> int:
        """This server's tokens of bare text."""
        return len(self.tokenizer.encode(text))

    def reply_text(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        if self.reply is not None:
            text = self.reply(messages)
        else:
            last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            text = "reply to: " + last.split("\n\n")[-1]
        words = text.split(" ")
        while len(words) > 1 and self.count_text(" ".join(words)) > max_tokens:
            words.pop()
        return " ".join(words)

    def complete(
        self, messages: list[dict[str, str]], max_tokens: int, stream: bool
    ) -> tuple[str, int, int, int] | None:
        """(reply, prompt tokens, cached tokens, completion tokens); None past n_ctx."""
        ids = self.tokenizer.encode(chatml(messages))
        if len(ids) > self.n_ctx:
            return None
        text = self.reply_text(messages, max_tokens)
        with self._lock:
            cached = 0
            for a, b in zip(ids, self._slot, strict=False):
                if a != b:
                    break
                cached += 1
            cached = min(cached, len(ids) - 1)
            completion = self.tokenizer.encode(text + "<|im_end|>")
            self._slot = ids + completion
            self.served.append(Served(len(ids), max_tokens, cached, stream, messages))
        return text, len(ids), cached, len(completion) - 1


def _handler(server: FakeLlamaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            path = self.path.rstrip("/")
            if path in ("/tokenize", "/apply-template"):
                if not server.counting:
                    return self._json(404, {"error": {"code": 404, "message": "File Not Found"}})
                server.counting_requests += 1
                if path == "/apply-template":
                    return self._json(200, {"prompt": chatml(body["messages"])})
                if "content" not in body:
                    return self._json(200, {"tokens": []})
                ids = server.tokenizer.encode(
                    body["content"], parse_special=body.get("parse_special", True)
                )
                if body.get("with_pieces"):
                    pieces = [{"id": i, "piece": server.tokenizer.piece(i)} for i in ids]
                    return self._json(200, {"tokens": pieces})
                return self._json(200, {"tokens": ids})
            if path != "/v1/chat/completions":
                return self._json(404, {"error": {"code": 404, "message": "File Not Found"}})
            msgs = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
            limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
            stream = bool(body.get("stream"))
            done = server.complete(msgs, limit, stream)
            if done is None:
                message = "the request exceeds the available context size, try increasing it"
                err = {"code": 400, "message": message, "type": "exceed_context_size_error"}
                return self._json(400, {"error": err})
            text, prompt, cached, completion = done
            usage: dict[str, Any] = {
                "completion_tokens": completion,
                "prompt_tokens": prompt,
                "total_tokens": prompt + completion,
            }
            if server.report_cached:
                usage["prompt_tokens_details"] = {"cached_tokens": cached}
            base = {"id": "chatcmpl-llama", "created": 0, "model": body.get("model", "x")}
            if not stream:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                data = {**base, "object": "chat.completion", "choices": [choice]}
                return self._json(200, {**data, "usage": usage})
            events = []
            chunk = {**base, "object": "chat.completion.chunk"}
            pieces = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
            for piece in pieces:
                delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                events.append({**chunk, "choices": [delta]})
            events.append(
                {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            )
            wants = (body.get("stream_options") or {}).get("include_usage")
            if wants and server.stream_usage:
                events.append({**chunk, "choices": [], "usage": usage})
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for event in [*(f"data: {json.dumps(e)}\n\n" for e in events), "data: [DONE]\n\n"]:
                data = event.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

        def _json(self, status: int, data: Any) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    return Handler
