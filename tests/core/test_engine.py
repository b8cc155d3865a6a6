"""The conversation engine over the deterministic EchoBackend."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backend import Generation, StreamChunk
from fmai_core.errors import (
    BackendError,
    BudgetError,
    ConfigurationError,
    EmptyMessageError,
    FMAIError,
    InvalidMessageError,
    MessageTooLongError,
    UnknownPolicyError,
)
from fmai_core.policies.base import Policy, PolicyRequest, Selection
from fmai_core.testing import EchoBackend


def make(policy: str | Policy = "sliding", **kw: Any) -> FiniteMemoryLLM:
    kw.setdefault("max_tokens", 200)
    kw.setdefault("max_new_tokens", 20)
    kw.setdefault("max_policy_ms", None)
    return FiniteMemoryLLM(kw.pop("backend", EchoBackend()), policy, **kw)


def test_chat_returns_reply_and_stats() -> None:
    llm = make(system_prompt="Be brief.")
    r = llm.chat("hello there")
    assert r.response == "echo: hello there"
    assert r.stats.turn == 0
    assert r.stats.prompt_tokens == llm.backend.count_tokens(
        [Message("system", "Be brief."), Message("user", "hello there")]
    )
    assert r.stats.completion_tokens == 4
    assert r.stats.context_tokens == r.stats.prompt_tokens + 4
    assert llm.stats.turns == 1


def test_context_is_exact_next_prompt_and_changes_nothing() -> None:
    backend = EchoBackend()
    llm = make(backend=backend, system_prompt="S.")
    llm.chat("first")
    before = llm.state
    ctx = llm.context("second")
    assert llm.state is before
    llm.chat("second")
    assert backend.calls[-1] == ctx


def test_history_is_append_only_between_evictions() -> None:
    backend = EchoBackend(prompt_cache=True)
    llm = make(backend=backend, max_tokens=400, max_new_tokens=16, system_prompt="S.")
    prompts = []
    for i in range(40):
        r = llm.chat(f"turn {i} says something about item {i * 3}")
        prompts.append((backend.calls[-1], r.stats))
    for (prev, _), (cur, stats) in zip(prompts, prompts[1:]):
        if not stats.evicted:
            assert cur[: len(prev) - 1] == prev[:-1]  # all but the previous new message
            assert cur[len(prev) - 1].content.startswith(prev[-1].content)
    evictions = sum(s.evicted for _, s in prompts)
    assert 0 < evictions < 20  # block eviction: many turns between evictions


def test_budget_rule_holds_and_system_prompt_kept() -> None:
    llm = make(max_tokens=120, max_new_tokens=20, system_prompt="You are kind.")
    for i in range(30):
        ctx = llm.context(f"question {i}")
        assert llm.backend.count_tokens(ctx) + 20 <= 120
        assert ctx[0] == Message("system", "You are kind.")
        assert ctx[-1].content.endswith(f"question {i}")
        llm.chat(f"question {i} " + "word " * (i % 7))


def test_errors_leave_memory_unchanged() -> None:
    llm = make(max_tokens=100, max_new_tokens=20, system_prompt="S.")
    llm.chat("hi")
    state = llm.state
    with pytest.raises(EmptyMessageError):
        llm.chat("   ")
    with pytest.raises(MessageTooLongError) as info:
        llm.chat("word " * 200)
    assert "max_tokens" in str(info.value)
    with pytest.raises(InvalidMessageError):
        llm.chat(42)  # type: ignore[arg-type]
    assert llm.state is state


def test_configuration_errors() -> None:
    with pytest.raises(UnknownPolicyError, match="choose one of"):
        make("nope")
    with pytest.raises(BudgetError):
        make(max_tokens=30, max_new_tokens=10, system_prompt="word " * 40)
    with pytest.raises(BudgetError):
        make(max_tokens=30, max_new_tokens=30)
    with pytest.raises(ConfigurationError):
        make(low_water=0)
    with pytest.raises(FMAIError):
        Message("robot", "x")  # type: ignore[arg-type]


class Failing(EchoBackend):
    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        raise ConnectionError("boom")

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        yield StreamChunk("partial")
        raise ConnectionError("boom")


def test_backend_failure_is_wrapped_and_nothing_stored() -> None:
    llm = make(backend=Failing())
    with pytest.raises(BackendError, match="not stored"):
        llm.chat("hi")
    with pytest.raises(BackendError):
        list(llm.stream("hi"))
    assert llm.state.history == ()
    assert llm.stats.turns == 0


def test_stream_yields_words_and_stores_at_end() -> None:
    llm = make()
    chunks = list(llm.stream("one two three"))
    assert "".join(chunks) == "echo: one two three"
    assert len(chunks) == 4
    assert llm.last_stats is not None and llm.last_stats.completion_tokens == 5
    assert [s.role for s in llm.state.history] == ["user", "assistant"]


def test_stream_closed_early_stores_nothing() -> None:
    llm = make()
    it = llm.stream("one two three")
    next(it)
    it.close()
    assert llm.state.history == ()


def test_extend_and_pin() -> None:
    llm = make(max_tokens=300)
    llm.extend(
        [
            Message("user", "I live in Oslo."),
            Message("assistant", "Nice."),
            Message("system", "The user is vegan."),
        ]
    )
    ctx = llm.context("where do I live?")
    assert "The user is vegan." in ctx[0].content
    assert ctx[1] == Message("user", "I live in Oslo.")
    with pytest.raises(InvalidMessageError):
        llm.extend(["text"])  # type: ignore[list-item]


def test_long_message_is_split_at_sentences() -> None:
    llm = make(max_tokens=2000, segment_tokens=16)
    text = " ".join(f"Sentence number {i} is here." for i in range(10))
    llm.extend([Message("user", text)])
    parts = llm.state.history
    assert len(parts) > 1 and all(p.kind == "part" for p in parts)
    assert all(p.text.endswith(".") for p in parts)
    assert " ".join(p.text for p in parts) == text
    assert llm.context("ok")[0].content == text


class Slow(Policy):
    """A policy that answers only when released: always past any deadline, no sleep."""

    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()

    def select(self, request: PolicyRequest) -> Selection:
        self.release.wait(30)  # the abandoned worker ends when the test releases it
        return Selection(keep=tuple(s.id for s in request.candidates))


def test_policy_past_deadline_falls_back_to_sliding() -> None:
    policy = Slow()
    llm = make(policy, max_tokens=80, max_new_tokens=10, max_policy_ms=20)
    try:
        stats = [llm.chat(f"message {i} with a few words").stats for i in range(8)]
    finally:
        policy.release.set()
    assert any(s.fallback for s in stats)
    fell = next(s for s in stats if s.fallback)
    assert fell.policy == "sliding"
    assert "deadline" in fell.policy_stats["fallback_reason"]
    assert llm.stats.fallbacks >= 1


class Broken(Policy):
    name = "broken"

    def select(self, request: PolicyRequest) -> Selection:
        raise RuntimeError("bug")


def test_policy_error_falls_back() -> None:
    llm = make(Broken(), max_tokens=80, max_new_tokens=10)
    for i in range(8):
        r = llm.chat(f"message {i} with a few words")
    assert llm.stats.fallbacks >= 1 and r.response


def test_hooks_called_and_failing_hook_does_not_break_turn() -> None:
    seen = []

    class Hook:
        def on_turn(self, stats: Any) -> None:
            seen.append(stats.turn)

    class Bad:
        def on_turn(self, stats: Any) -> None:
            raise ValueError("x")

    llm = make(hooks=[Bad(), Hook()])
    llm.chat("a")
    llm.chat("b")
    assert seen == [0, 1]


def test_reset() -> None:
    llm = make()
    llm.chat("a")
    llm.reset()
    assert llm.state.history == () and llm.stats.turns == 0


async def test_async_chat_and_stream() -> None:
    llm = make()
    r = await llm.achat("hello")
    assert r.response == "echo: hello"
    chunks = [c async for c in llm.astream("one two")]
    assert "".join(chunks) == "echo: one two"
    assert llm.stats.turns == 2


async def test_concurrent_async_calls_never_interleave() -> None:
    # No delay needed: each turn plans in a worker thread (asyncio.to_thread), so the other
    # tasks always run meanwhile and wait for the conversation.
    llm = make(max_tokens=2000)
    await asyncio.gather(*(llm.achat(f"m{i}") for i in range(10)))
    roles = [s.role for s in llm.state.history]
    assert roles == ["user", "assistant"] * 10
    texts = [s.text for s in llm.state.history]
    for u, a in zip(texts[::2], texts[1::2]):
        assert a == "echo: " + u


def test_reuse_reported_from_backend() -> None:
    llm = make(backend=EchoBackend(prompt_cache=True), max_tokens=2000)
    llm.chat("hello")
    r = llm.chat("again")
    assert r.stats.reused_tokens > 0
    assert r.stats.prefill_tokens == r.stats.prompt_tokens - r.stats.reused_tokens


class SlowSignals(EchoBackend):
    """A backend whose model signal comes only when released: past any latency budget."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def score_importance(self, texts: Sequence[str], query: str) -> list[float]:
        self.release.wait(30)  # the abandoned worker ends when the test releases it
        return [1.0] * len(texts)


def test_slow_model_signals_are_switched_off_after_a_deadline_miss() -> None:
    backend = SlowSignals()
    llm = make("importance", backend=backend, max_tokens=90, max_new_tokens=10, max_policy_ms=100)
    assert llm.model_signals
    try:
        stats = [llm.chat(f"message {i} with a few more words in it").stats for i in range(12)]
    finally:
        backend.release.set()
    missed = [s for s in stats if s.fallback]
    assert missed, "the slow signal must miss the deadline once"
    assert "model_signals" in missed[0].policy_stats
    assert not llm.model_signals
    later = stats[stats.index(missed[0]) + 1 :]
    assert later and not any(s.fallback for s in later)
    assert all(s.policy == "importance" for s in later)
    llm.reset()
    assert llm.model_signals


def test_messages_are_whole_messages_with_metadata_segments_are_the_parts() -> None:
    llm = make(max_tokens=120, max_new_tokens=10, segment_tokens=16)
    long = "\n\n".join(f"Sentence number {i} is here,  with some words." for i in range(6))
    llm.extend(
        [Message("user", long, name="Ada", timestamp="2024-05-01"), Message("assistant", "Ok.")]
    )
    replies = [llm.chat(f"message {i} with a few words").response for i in range(6)]
    assert llm.state.archive, "some history was evicted: the record spans both"
    messages = llm.messages()
    assert all(isinstance(m, Message) for m in messages)
    assert messages[0] == Message("user", long, "Ada", "2024-05-01")  # whole, verbatim
    assert messages[1] == Message("assistant", "Ok.")
    assert [m.content for m in messages[2:]] == [
        text for i, r in enumerate(replies) for text in (f"message {i} with a few words", r)
    ]
    segments = llm.segments()
    assert [s.id for s in segments] == sorted(s.id for s in segments)
    assert len(segments) > len(messages) == len({s.message_id for s in segments})
    assert {s.kind for s in segments if s.message_id == segments[0].message_id} == {"part"}


def test_fmai_core_signals_is_a_deprecated_alias_of_summarizer() -> None:
    import fmai_core.signals as old
    from fmai_core import summarizer

    with pytest.warns(DeprecationWarning, match=r"fmai_core\.summarizer\.backend_summarizer"):
        assert old.backend_summarizer is summarizer.backend_summarizer
    with pytest.warns(DeprecationWarning, match=r"fmai_core\.summarizer\.SUMMARY_PROMPT"):
        assert old.SUMMARY_PROMPT == summarizer.SUMMARY_PROMPT
    with pytest.raises(AttributeError):
        _ = old.Signals
