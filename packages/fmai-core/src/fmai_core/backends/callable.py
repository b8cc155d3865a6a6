"""`CallableBackend`: any function `messages -> str` as an fmai backend."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from fmai_core.backend import Generation, StreamChunk, Usage
from fmai_core.backends.tokens import ChatCounter, TextCount, resolve_counter
from fmai_core.errors import BackendError, FMAIError
from fmai_core.messages import Message

__all__ = ["CallableBackend"]

ReplyFn = Callable[[list[Message]], str]


class CallableBackend:
    """Wrap a plain function `messages -> str` (a local model, a rule, another client).

    Token counting is pluggable: pass `tokenizer` as a function `text -> int`, an OpenAI
    encoding name, `"hf:NAME"` or a path (see
    [`resolve_counter`][fmai_core.backends.tokens.resolve_counter]); by default the
    calibrated estimate is used. Each message adds `per_message_tokens` of template overhead
    and the reply opener `per_reply_tokens`.

    The function may accept keyword arguments; it receives the generation params it declares
    (`max_new_tokens`, `temperature`, ...). Streaming yields the reply in word-sized pieces
    after the function returns. Exceptions from the function become
    [`BackendError`][fmai_core.errors.BackendError].

    Args:
        fn: The reply function.
        tokenizer: How to count tokens (default: the estimate).
        name: A display name.
        per_message_tokens: Template tokens around each message.
        per_reply_tokens: Template tokens that open the reply.

    Example:
        >>> from fmai_core import Message
        >>> def shout(msgs):
        ...     return msgs[-1].content.upper()
        >>> b = CallableBackend(shout, tokenizer=lambda t: len(t.split()))
        >>> b.generate([Message("user", "hi there")]).text
        'HI THERE'
        >>> b.count_tokens([Message("user", "hi there")])
        9
    """

    def __init__(
        self,
        fn: ReplyFn,
        *,
        tokenizer: str | TextCount | None = "estimate",
        name: str | None = None,
        per_message_tokens: int = 3,
        per_reply_tokens: int = 3,
    ) -> None:
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", "callable"))
        count, self.tokenizer_id, self.exact_count = resolve_counter(self.name, tokenizer)
        self._counter = ChatCounter(count, per_message_tokens, per_reply_tokens)
        try:
            sig = inspect.signature(fn)
            self._accepts = {
                p.name
                for p in sig.parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            }
            self._var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        except (TypeError, ValueError):
            self._accepts, self._var_kw = set(), False

    def __repr__(self) -> str:
        return f"CallableBackend({self.name!r}, tokenizer={self.tokenizer_id!r})"

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens: text and role tokens, plus template overhead."""
        return self._counter(messages)

    def count_text(self, text: str) -> int:
        """Tokens of bare text."""
        return self._counter.count_text(text)

    def _call(self, messages: Sequence[Message], params: dict[str, Any]) -> str:
        kwargs = {k: v for k, v in params.items() if self._var_kw or k in self._accepts}
        try:
            text = self.fn(list(messages), **kwargs)
        except FMAIError:
            raise
        except Exception as exc:
            raise BackendError(
                f"The reply function {self.name!r} raised {type(exc).__name__}: {exc}. "
                "Fix the function; nothing was stored."
            ) from exc
        if not isinstance(text, str):
            raise BackendError(
                f"The reply function {self.name!r} returned {type(text).__name__}, not str: "
                "return the reply text."
            )
        return text

    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Call the function and return its reply with counted usage."""
        start = time.perf_counter()
        text = self._call(messages, params)
        prompt = self._counter(messages)
        usage = Usage(prompt, 0, prompt, self._counter.count_text(text))
        ms = (time.perf_counter() - start) * 1000
        return Generation(text=text, usage=usage, latency_ms=ms, ttft_ms=ms)

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        """Yield the reply word by word (space kept with the next word), then the Generation."""
        yield from _word_chunks(self.generate(messages, **params))

    async def agenerate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Run `generate` in a worker thread."""
        import asyncio  # imported on first async use: asyncio is slow to import

        return await asyncio.to_thread(self.generate, messages, **params)

    async def astream(
        self, messages: Sequence[Message], **params: Any
    ) -> AsyncIterator[StreamChunk]:
        """Async twin of `stream` (the function runs in a worker thread)."""
        for chunk in _word_chunks(await self.agenerate(messages, **params)):
            yield chunk


def _word_chunks(gen: Generation) -> list[StreamChunk]:
    """The reply of `gen` word by word (a space kept with the next word), then `gen`."""
    pieces = [w if i == 0 else " " + w for i, w in enumerate(gen.text.split(" "))]
    return [*(StreamChunk(p) for p in pieces if p), StreamChunk("", generation=gen)]
