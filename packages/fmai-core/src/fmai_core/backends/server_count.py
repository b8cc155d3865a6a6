"""Exact token counts from the serving engine itself: llama.cpp's server and vLLM.

Some OpenAI-compatible servers count tokens for you, with the model's own tokenizer and
chat template (its default system prompt included), which is the count the server then
bills and caches by. [`OpenAIBackend`][fmai_core.backends.OpenAIBackend] uses them when
`count="auto"` (the default with a `base_url`) finds them, or `count="server"` asks:

- llama.cpp's `llama-server`: a prompt is `POST /apply-template` (the templated prompt),
  then `POST /tokenize` of it with `add_special` (special tokens parsed, as its chat endpoint
  tokenizes); bare text is `POST /tokenize`.
- vLLM: a prompt is `POST /tokenize` with `messages` and `add_generation_prompt` (its
  `count`); bare text is `POST /tokenize` with `prompt`.

The endpoints sit at the server's root (`base_url` without its `/v1`). The server is probed
once, on the first count; counts are cached per text and per prompt (LRU). The calls use
the standard library only (`urllib`), with the backend's key as a bearer token.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from fmai_core.errors import BackendError
from fmai_core.messages import Message

__all__ = ["SERVER_KINDS", "ServerCounter", "server_root"]

#: The servers whose counting endpoints fmai knows.
SERVER_KINDS = ("llama.cpp", "vllm")


def server_root(base_url: str) -> str:
    """The server's root URL: `base_url` without a trailing `/v1` (and slash)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class _Unavailable(Exception):
    """The server does not offer this endpoint (or answered something else)."""


class ServerCounter:
    """Counts tokens through a server's own tokenize endpoints (see the module docs).

    Args:
        base_url: The backend's `base_url` (`http://host:8080/v1`).
        model: The model name (vLLM's endpoints want it).
        api_key: Sent as `Authorization: Bearer ...`; never shown in an error.
        timeout: Seconds per request.
        cache_size: Most texts (and, separately, prompts) whose counts are remembered.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 10.0,
        cache_size: int = 4096,
    ) -> None:
        self.root = server_root(base_url)
        self.model = model
        self.timeout = timeout
        self._key = api_key
        self.kind: str | None = None  # set by probe()
        self.requests = 0  # HTTP requests made (probe included)
        self._lock = threading.Lock()
        self._size = max(0, cache_size)
        self._texts: OrderedDict[str, int] = OrderedDict()
        self._prompts: OrderedDict[tuple[tuple[str, str], ...], int] = OrderedDict()

    # -- HTTP ---------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"content-type": "application/json"}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(
            self.root + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise _Unavailable(f"{path} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            detail = str(exc)
            if self._key:
                detail = detail.replace(self._key, "***")
            raise _Unavailable(f"{path} failed ({type(exc).__name__}: {detail})") from None
        if not isinstance(data, dict):
            raise _Unavailable(f"{path} answered {type(data).__name__}, not an object")
        return data

    # -- probing ------------------------------------------------------------------------
    def probe(self) -> str | None:
        """Find which counting endpoints the server has; returns the kind or `None`.

        Tries vLLM's `/tokenize` with messages first (its answer has a `count`), then
        llama.cpp's `/apply-template` followed by `/tokenize`. Any error means "not here".
        """
        sample = [Message("user", "Hi")]
        notes: list[str] = []
        for kind in SERVER_KINDS[::-1]:  # vllm first: llama.cpp answers its request with []
            self.kind = kind
            try:
                n = self._prompt_uncached(sample)
            except _Unavailable as exc:
                notes.append(f"{kind}: {exc}")
                continue
            if n > 0:
                self.note = ""
                return kind
            notes.append(f"{kind}: a count of 0")
        self.kind = None
        self.note = "; ".join(notes)
        return None

    #: Why the probe found no counting endpoint (empty when it found one).
    note: str = ""

    # -- counting -----------------------------------------------------------------------
    def _prompt_uncached(self, messages: Sequence[Message]) -> int:
        msgs = [m.to_dict() for m in messages]
        if self.kind == "vllm":
            data = self._post(
                "/tokenize",
                {"model": self.model, "messages": msgs, "add_generation_prompt": True},
            )
            return _count(data, "count")
        data = self._post("/apply-template", {"messages": msgs})
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise _Unavailable("/apply-template answered without a prompt")
        data = self._post("/tokenize", {"content": prompt, "add_special": True})
        return _count(data, "tokens")

    def _text_uncached(self, text: str) -> int:
        if not text:
            return 0
        if self.kind == "vllm":
            body: dict[str, Any] = {
                "model": self.model,
                "prompt": text,
                "add_special_tokens": False,
            }
            return _count(self._post("/tokenize", body), "count")
        return _count(self._post("/tokenize", {"content": text, "add_special": False}), "tokens")

    def prompt(self, messages: Sequence[Message]) -> int:
        """The server's prompt length for `messages`, generation prompt included."""
        key = tuple((m.role, m.content) for m in messages)
        hit = self._get(self._prompts, key)
        if hit is not None:
            return hit
        n = self._call(self._prompt_uncached, messages)
        self._put(self._prompts, key, n)
        return n

    def text(self, text: str) -> int:
        """The server's token count of bare text (no special tokens added)."""
        hit = self._get(self._texts, text)
        if hit is not None:
            return hit
        n = self._call(self._text_uncached, text)
        self._put(self._texts, text, n)
        return n

    def _call(self, fn: Any, arg: Any) -> int:
        try:
            return int(fn(arg))
        except _Unavailable as exc:
            raise BackendError(
                f"The server at {self.root} stopped counting tokens ({exc}); the turn was "
                "not sent. Check that it is up, or pass count='estimate'."
            ) from None

    def _get(self, cache: OrderedDict[Any, int], key: Any) -> int | None:
        with self._lock:
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
            return hit

    def _put(self, cache: OrderedDict[Any, int], key: Any, value: int) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > self._size:
                cache.popitem(last=False)


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if key == "tokens" and isinstance(value, list):
        return len(value)
    if key == "count" and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Unavailable(f"the answer had no {key!r}")
