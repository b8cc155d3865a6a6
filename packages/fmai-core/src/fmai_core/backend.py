"""The backend protocol: what a model must offer fmai, and optional capabilities.

A backend is anything with these methods; it need not inherit from anything. fmai discovers
optional capabilities (importance scores, embeddings, summaries, sentence splitting) with
`isinstance` checks against the runtime-checkable protocols below, never by class.

Example:
    A minimal backend around a function (see also
    [`CallableBackend`][fmai_core.backends.CallableBackend]):

    ```python
    from fmai_core import Message
    from fmai_core.testing import EchoBackend

    backend = EchoBackend()
    gen = backend.generate([Message("user", "hello there")], max_new_tokens=8)
    print(gen.text, gen.usage.prompt_tokens)
    ```
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from fmai_core.messages import Message

__all__ = [
    "AsyncBackend",
    "Backend",
    "Embedder",
    "Generation",
    "ImportanceScorer",
    "SentenceSplitter",
    "StreamChunk",
    "Summarizer",
    "TextCounter",
    "Usage",
    "to_thread_to_its_end",
    "token_count",
]

_T = TypeVar("_T")


async def to_thread_to_its_end(
    call: Callable[..., _T], *args: Any, on_cancel: Callable[[], object] | None = None
) -> _T:
    """`call(*args)` in a worker thread, awaited so that a cancellation leaves nothing running.

    Cancelled meanwhile, it calls `on_cancel()` (a backend sets the event its generation
    checks after each token), waits for the thread's end however many cancellations arrive
    (a second `cancel()`, or an anyio cancel scope, which repeats its cancel on every pass
    of the loop), then raises the cancellation; the call's own result or error is dropped.
    `asyncio.to_thread` alone returns at once and leaves the call running behind it.
    """
    import asyncio  # imported here: keeps `import fmai_core` fast

    work = asyncio.ensure_future(asyncio.to_thread(call, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        while not work.done():
            with suppress(asyncio.CancelledError):  # the first one is raised, below
                await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: the cancellation is what is raised
        raise


def token_count(value: Any) -> int | None:
    """`value` as a token count, or `None` when it cannot be one.

    A count is a non-negative whole number: an int, or a float with no fraction (some
    servers write `12.0`). Anything else a provider or a backend reports (a negative
    number, `12.5`, a string, `True`, an infinity) is not a count: fmai then counts for
    itself and marks the figure estimated, rather than carrying it into the stats (and
    into a checkpoint that would then not load).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one generation.

    Attributes:
        prompt_tokens: Tokens in the prompt sent to the model.
        reused_tokens: Prompt tokens served from a cache (a local KV cache or a hosted
            prompt cache) instead of being computed; `None` when the provider did not say
            (not the same as 0, "nothing was reused").
        prefill_tokens: Prompt tokens computed this call (`prompt_tokens - reused_tokens`;
            all of them when `reused_tokens` is `None`).
        completion_tokens: Tokens generated.
        estimated: Names of the fields above that are fmai's estimates, not the provider's
            report or an exact count (empty for a backend that counts its own tokens).
    """

    prompt_tokens: int = 0
    reused_tokens: int | None = 0
    prefill_tokens: int = 0
    completion_tokens: int = 0
    estimated: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Generation:
    """The result of one call to a backend.

    Attributes:
        text: The generated reply.
        usage: Token usage as the backend measured it.
        latency_ms: Wall time of the whole call.
        ttft_ms: Time to the first generated token (equal to `latency_ms` when unknown).
        finish_reason: `"stop"`, `"length"` or a provider-specific reason.
        extra: Backend-specific details (never secrets).
    """

    text: str
    usage: Usage = field(default_factory=Usage)
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    finish_reason: str = "stop"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One piece of a streamed reply.

    A stream yields chunks with `text` as the reply arrives; the last chunk has
    `generation` set to the complete [`Generation`][fmai_core.backend.Generation] (its
    `text` may be empty).
    """

    text: str
    generation: Generation | None = None


@runtime_checkable
class Backend(Protocol):
    """A chat model.

    Attributes:
        name: A human-readable model name.
        tokenizer_id: Identifies the tokenizer; checkpoints refuse to load under another one.
    """

    name: str
    tokenizer_id: str

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Return the exact prompt length of `messages`, chat-template overhead included."""
        ...

    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Generate a reply to `messages`.

        Params every backend accepts: `max_new_tokens` (int), `temperature` (float, 0 is
        greedy), `top_p` (float), `stop` (list of strings), `seed` (int). Unknown params
        may be ignored.
        """
        ...

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        """Generate a reply, yielding text as it is produced; the last chunk has the Generation."""
        ...


@runtime_checkable
class AsyncBackend(Protocol):
    """Async twins of [`Backend`][fmai_core.backend.Backend]'s methods (optional).

    The engine runs the sync methods in a worker thread when a backend lacks these.
    """

    async def agenerate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Async [`Backend.generate`][fmai_core.backend.Backend.generate]."""
        ...

    def astream(self, messages: Sequence[Message], **params: Any) -> AsyncIterator[StreamChunk]:
        """Async [`Backend.stream`][fmai_core.backend.Backend.stream]."""
        ...


@runtime_checkable
class TextCounter(Protocol):
    """Counts the tokens of bare text, without chat-template overhead (optional, faster)."""

    def count_text(self, text: str) -> int:
        """Return the number of tokens of `text` on its own."""
        ...


@runtime_checkable
class ImportanceScorer(Protocol):
    """Scores how much the model attends to each text (optional capability)."""

    def score_importance(self, texts: Sequence[str], query: str) -> list[float]:
        """Return one non-negative score per text: the attention the model pays to it.

        Args:
            texts: The candidate segments, in conversation order.
            query: The incoming user message.
        """
        ...


@runtime_checkable
class Embedder(Protocol):
    """Embeds texts as vectors (optional capability)."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Return one vector per text, all of the same length."""
        ...


@runtime_checkable
class Summarizer(Protocol):
    """Writes a summary of a text (optional capability)."""

    def summarize(self, text: str, max_tokens: int) -> str:
        """Return a summary of `text` of at most about `max_tokens` tokens."""
        ...


@runtime_checkable
class SentenceSplitter(Protocol):
    """Splits text into sentences (optional; fmai-multilingual provides one for every script)."""

    def split_sentences(self, text: str) -> list[str]:
        """Return the sentences of `text`; joining them with spaces must keep every word."""
        ...
