"""Deterministic backends for tests and examples.

[`EchoBackend`][fmai_core.testing.EchoBackend] has a real, simple tokenizer (words and
punctuation marks are tokens), so its `count_tokens` is exact for itself, and its replies are
predictable: it echoes the last user message. It streams word by word and can simulate a
prompt cache, so policies, the engine and cache-stable layouts are tested without a model.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from fmai_core.backend import Generation, StreamChunk, Usage
from fmai_core.messages import Message

__all__ = ["EchoBackend", "tokenize"]

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
# Per-message template overhead: "<role>", ":" ... "<end>", like a real chat template.
MESSAGE_OVERHEAD = 3
# Tokens that open the assistant's reply at the end of every prompt.
GENERATION_PROMPT = 2


def tokenize(text: str) -> list[str]:
    """Split text into EchoBackend tokens: runs of word characters and single punctuation marks."""
    return _TOKEN.findall(text)


class EchoBackend:
    """A deterministic backend that echoes the last user message.

    Args:
        prefix: Text put before the echo (`"echo: "` gives replies like `"echo: hi there"`).
        reply: Optional function `messages -> str` that replaces the echo.
        prompt_cache: Simulate a provider prompt cache: `reused_tokens` is the longest common
            token prefix with the previous prompt.
        delay_s: Sleep this long per streamed token (to test timeouts and latency).

    Examples:
        >>> from fmai_core import Message
        >>> EchoBackend().generate([Message("user", "hello world")]).text
        'echo: hello world'
    """

    name = "echo"
    tokenizer_id = "fmai-echo-v1"

    def __init__(
        self,
        prefix: str = "echo: ",
        reply: Callable[[Sequence[Message]], str] | None = None,
        *,
        prompt_cache: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        self.prefix = prefix
        self.reply = reply
        self.prompt_cache = prompt_cache
        self.delay_s = delay_s
        self.calls: list[list[Message]] = []
        self._last_prompt: list[str] = []

    # -- tokens -------------------------------------------------------------------------
    def prompt_tokens(self, messages: Sequence[Message]) -> list[str]:
        """Return the rendered prompt as tokens, template markers included."""
        out: list[str] = []
        for m in messages:
            out += [f"<{m.role}>", ":", *tokenize(m.content), "<end>"]
        out += ["<assistant>", ":"]
        return out

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Exact prompt length: message tokens + 3 per message + 2 for the reply opener."""
        return (
            sum(len(tokenize(m.content)) + MESSAGE_OVERHEAD for m in messages) + GENERATION_PROMPT
        )

    def count_text(self, text: str) -> int:
        """Tokens of bare text."""
        return len(tokenize(text))

    # -- generation ---------------------------------------------------------------------
    def _reply_text(self, messages: Sequence[Message], max_new_tokens: int) -> str:
        if self.reply is not None:
            text = self.reply(messages)
        else:
            last = next((m.content for m in reversed(messages) if m.role == "user"), "")
            text = self.prefix + last
        words = text.split(" ")
        out: list[str] = []
        used = 0
        for word in words:
            n = len(tokenize(word))
            if used + n > max_new_tokens:
                break
            out.append(word)
            used += n
        return " ".join(out)

    def _usage(self, messages: Sequence[Message], completion: str) -> Usage:
        tokens = self.prompt_tokens(messages)
        reused = 0
        if self.prompt_cache:
            for a, b in zip(tokens, self._last_prompt):
                if a != b:
                    break
                reused += 1
            self._last_prompt = tokens
        return Usage(
            prompt_tokens=len(tokens),
            reused_tokens=reused,
            prefill_tokens=len(tokens) - reused,
            completion_tokens=len(tokenize(completion)),
        )

    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Return the echo reply, truncated to `max_new_tokens` (default 256)."""
        start = time.perf_counter()
        self.calls.append(list(messages))
        text = self._reply_text(messages, int(params.get("max_new_tokens", 256)))
        if self.delay_s:
            time.sleep(self.delay_s * max(1, len(text.split())))
        ms = (time.perf_counter() - start) * 1000
        return Generation(text=text, usage=self._usage(messages, text), latency_ms=ms, ttft_ms=ms)

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        """Yield the reply word by word, then a final chunk with the Generation."""
        start = time.perf_counter()
        self.calls.append(list(messages))
        text = self._reply_text(messages, int(params.get("max_new_tokens", 256)))
        ttft = 0.0
        for i, word in enumerate(text.split(" ") if text else []):
            if self.delay_s:
                time.sleep(self.delay_s)
            if i == 0:
                ttft = (time.perf_counter() - start) * 1000
            yield StreamChunk(word if i == 0 else " " + word)
        ms = (time.perf_counter() - start) * 1000
        gen = Generation(
            text=text, usage=self._usage(messages, text), latency_ms=ms, ttft_ms=ttft or ms
        )
        yield StreamChunk("", generation=gen)

    async def agenerate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Async twin of `generate`."""
        import asyncio  # here, not at the top: `import fmai_core.testing` stays light

        if self.delay_s:
            await asyncio.sleep(0)
        return self.generate(messages, **params)

    async def astream(
        self, messages: Sequence[Message], **params: Any
    ) -> AsyncIterator[StreamChunk]:
        """Async twin of `stream`."""
        import asyncio

        for chunk in self.stream(messages, **params):
            yield chunk
            await asyncio.sleep(0)
