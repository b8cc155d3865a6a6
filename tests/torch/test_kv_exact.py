"""Greedy output is token-identical with KV reuse on and off, and reuse is reported truly."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

from conftest import HYBRID_STABLE

from fmai_core import FiniteMemoryLLM, Message
from fmai_torch.kv import common_prefix

USER_TURNS = [
    "hello , my name is ada and my sister is called eve .",
    "i live in paris with two cats and a dog .",
    "what is the name of my sister ?",
    "tell me about rome and london in the summer .",
    "my favourite food is pizza and i like tea in the morning .",
    "do you remember where i live ?",
    "we travel to tokyo by train next week .",
    "what do you think of my cats ?",
]


def test_direct_turns_identical_and_reuse_truthful(make_backend) -> None:  # type: ignore[no-untyped-def]
    on, off = make_backend(kv_reuse=True), make_backend(kv_reuse=False)
    messages = [Message("system", "you are a good friend .")]
    previous: list[int] = []
    for turn, text in enumerate(USER_TURNS[:5]):
        messages.append(Message("user", text))
        prompt = on.encode(messages)
        a = on.generate(messages, max_new_tokens=20)
        b = off.generate(messages, max_new_tokens=20)
        assert a.extra["token_ids"] == b.extra["token_ids"]
        assert a.text == b.text
        assert a.usage.prompt_tokens == b.usage.prompt_tokens == len(prompt)
        assert b.usage.reused_tokens == 0
        expected = min(common_prefix(previous, prompt), len(prompt) - 1)
        assert a.usage.reused_tokens == expected
        assert a.usage.prefill_tokens == len(prompt) - expected
        if turn > 0:
            assert a.usage.reused_tokens > 0.5 * len(prompt)
        # The cache now holds the prompt and all generated tokens but the last.
        previous = prompt + a.extra["token_ids"][:-1]
        assert on.cached_tokens == len(previous)
        messages.append(Message("assistant", a.text))


def test_cropped_history_still_identical(make_backend) -> None:  # type: ignore[no-untyped-def]
    """Dropping old messages (an eviction) breaks the prefix; output stays identical."""
    on, off = make_backend(kv_reuse=True), make_backend(kv_reuse=False)
    system = Message("system", "you are a good friend .")
    history: list[Message] = []
    reused_after_crop: list[int] = []
    for turn, text in enumerate(USER_TURNS):
        history.append(Message("user", text))
        if turn == 4:  # evict the oldest two exchanges as a block
            history = history[4:]
        messages = [system, *history]
        a = on.generate(messages, max_new_tokens=12)
        b = off.generate(messages, max_new_tokens=12)
        assert a.extra["token_ids"] == b.extra["token_ids"]
        if turn >= 4:
            reused_after_crop.append(a.usage.reused_tokens)
        history.append(Message("assistant", a.text))
    # Right after the crop only the system prompt is shared; later turns reuse again.
    assert reused_after_crop[0] < reused_after_crop[1]
    assert all(r > 0 for r in reused_after_crop)


def test_same_prompt_twice_keeps_one_token_to_compute(make_backend) -> None:  # type: ignore[no-untyped-def]
    on = make_backend()
    messages = [Message("user", "hello , what is your name ?")]
    first = on.generate(messages, max_new_tokens=1)
    second = on.generate(messages, max_new_tokens=1)
    assert second.usage.reused_tokens == second.usage.prompt_tokens - 1
    assert second.usage.prefill_tokens == 1
    assert first.extra["token_ids"] == second.extra["token_ids"]


def _pair(make_backend, max_tokens: int):  # type: ignore[no-untyped-def]
    kwargs = {
        "policy": "sliding",
        "max_tokens": max_tokens,
        "max_new_tokens": 16,
        "system_prompt": "you are a good friend .",
    }
    return (
        FiniteMemoryLLM(make_backend(kv_reuse=True), **kwargs),
        FiniteMemoryLLM(make_backend(kv_reuse=False), **kwargs),
    )


def test_engine_with_evictions_identical(make_backend) -> None:  # type: ignore[no-untyped-def]
    """Through FiniteMemoryLLM under a tight budget: evictions happen, output matches."""
    on, off = _pair(make_backend, max_tokens=160)
    evictions = 0
    reuse_after_eviction: list[int] = []
    for i in range(12):
        text = USER_TURNS[i % len(USER_TURNS)]
        a, b = on.chat(text), off.chat(text)
        assert a.response == b.response
        assert a.stats.prompt_tokens == b.stats.prompt_tokens <= 160 - 16
        assert b.stats.reused_tokens == 0
        assert a.stats.reused_tokens + a.stats.prefill_tokens == a.stats.prompt_tokens
        if a.stats.evicted:
            evictions += 1
        elif evictions:
            reuse_after_eviction.append(a.stats.reused_tokens)
    assert evictions >= 2
    assert reuse_after_eviction and all(r > 0 for r in reuse_after_eviction)
    assert on.stats.reuse_ratio > 0.3


def test_engine_stream_and_chat_agree(make_backend) -> None:  # type: ignore[no-untyped-def]
    on, off = _pair(make_backend, max_tokens=1024)
    for text in USER_TURNS[:3]:
        streamed = "".join(on.stream(text))
        assert streamed == off.chat(text).response
        assert on.last_stats is not None


@pytest.mark.parametrize("policy", ["importance", "semantic", "rolling_summary", "hybrid"])
def test_every_policy_with_model_signals(make_backend, policy: str) -> None:  # type: ignore[no-untyped-def]
    """The model-signal policies run on HFBackend; reuse on/off still agree turn by turn."""
    kwargs = {
        "policy": policy,
        "max_tokens": 200,
        "max_new_tokens": 12,
        "system_prompt": "you are a good friend .",
        "max_policy_ms": None,  # no deadline: the decisions must not depend on timing
    }
    on = FiniteMemoryLLM(make_backend(kv_reuse=True), **kwargs)
    off = FiniteMemoryLLM(make_backend(kv_reuse=False), **kwargs)
    evicted = False
    for text in USER_TURNS:
        a, b = on.chat(text), off.chat(text)
        assert a.response == b.response
        assert a.stats.prompt_tokens == b.stats.prompt_tokens
        assert a.stats.prompt_tokens + 12 <= 200
        if a.stats.evicted:
            evicted = True
            assert a.stats.policy_stats["signal"] == "model"  # the model's signals were used
    assert evicted
    assert on.stats.reused_tokens > 0


@pytest.mark.parametrize("policy", ["hybrid", "semantic"])
def test_stable_recall_layout_identical_and_append_only(make_backend, policy: str) -> None:  # type: ignore[no-untyped-def]
    """recall_layout="stable": reuse on and off agree turn by turn, the budget holds, and a
    turn that evicts nothing sends the previous prompt and reply unchanged (its recalled
    block included), so the cache serves all of them."""
    kwargs = {**HYBRID_STABLE, "policy": policy, "max_tokens": 384, "max_new_tokens": 16}
    on = FiniteMemoryLLM(make_backend(kv_reuse=True), **kwargs)
    off = FiniteMemoryLLM(make_backend(kv_reuse=False), **kwargs)
    previous: list[Message] = []
    kept_blocks = 0
    for i in range(20):
        text = USER_TURNS[i % len(USER_TURNS)]
        prompt = on.context(text)
        assert prompt == off.context(text)
        a, b = on.chat(text), off.chat(text)
        assert a.response == b.response
        assert a.stats.prompt_tokens == b.stats.prompt_tokens
        assert a.stats.prompt_tokens + 16 <= 384
        if previous and not a.stats.evicted and "recall_shown_dropped" not in a.stats.policy_stats:
            # Append-only: the last prompt, then its reply, then the new user turn.
            assert prompt[: len(previous)] == previous
            assert prompt[len(previous)].role == "assistant"
            cached = on.backend.encode(previous)
            assert a.stats.reused_tokens >= len(cached) - 1
            if "\n" in previous[-1].content:  # the last turn's recalled block stayed
                kept_blocks += 1
        previous = prompt
    assert kept_blocks >= 1
