"""The per-text hosted count: texts the provider has counted are counted by its own count.

A hosted provider without counting endpoints reports usage after each call: the prompt's
tokens and the reply's. The reply comes back as the next prompt's assistant message, so its
`completion_tokens` are the provider's own count of that text, and what a report has beyond
the texts already known is the count of the one new message in it. The loopback stand-in for
llama-server (tests/core/fakellama.py: SmolLM2's template with its default system prompt, a
BPE trained in the test) has no `/tokenize` here, so fmai has only usage to go on.
"""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("openai", reason="needs the OpenAI SDK: pip install 'fmai-core[openai]'")

from fakellama import FakeLlamaServer
from test_hosted_exact import CORPUS, reply, user_message

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backends import OpenAIBackend
from fmai_core.backends.tokens import ChatCounter, estimate_tokens
from fmai_core.memory import segment_message
from fmai_core.testing import EchoBackend
from fmai_core.tokens import TokenCounter


def test_a_reply_is_counted_by_the_providers_own_count() -> None:
    with FakeLlamaServer(CORPUS, reply, counting=False) as srv:
        backend = OpenAIBackend("smollm2", base_url=srv.base_url)
        llm = FiniteMemoryLLM(backend, policy="sliding", max_tokens=1024, max_new_tokens=128)
        for i in range(4):
            answer = llm.chat(user_message(i))
            assert backend.count_text(answer.response) == answer.stats.completion_tokens
            assert "completion_tokens" not in answer.stats.estimated


@pytest.mark.parametrize("max_tokens", [384, 1024])
def test_most_of_a_prompt_is_counted_exactly(max_tokens: int) -> None:
    """Within 5% of the server's count, median, after the first turn (the issue's target),
    and much closer on a long prompt, where the one estimated message weighs little."""
    with FakeLlamaServer(CORPUS, reply, counting=False) as srv:
        backend = OpenAIBackend("smollm2", base_url=srv.base_url)
        llm = FiniteMemoryLLM(backend, policy="sliding", max_tokens=max_tokens, max_new_tokens=128)
        ratios = []
        for i in range(20):
            planned = llm.context(user_message(i))
            ours = backend.count_tokens(planned)
            llm.chat(user_message(i))
            assert srv.served[-1].messages == [m.to_dict() for m in planned]
            if i >= 1:
                ratios.append(ours / srv.served[-1].prompt_tokens)
        # measured: 1.020 (384) and 1.005 (1024); the affine fit alone was about 1.05
        assert 1.0 <= statistics.median(ratios) <= {384: 1.05, 1024: 1.02}[max_tokens], ratios
        assert all(s.prompt_tokens + s.max_tokens <= max_tokens for s in srv.served)


def test_a_count_out_of_proportion_is_not_learned() -> None:
    # e.g. a reasoning model's completion_tokens, which count hidden reasoning as well
    counter = ChatCounter(estimate_tokens)
    counter.learn("a short reply.", 900)
    assert counter.count_text("a short reply.") < 20
    counter.learn("a short reply.", 4)
    msgs = [Message("user", "hello there"), Message("assistant", "a short reply.")]
    counter.observe(msgs, 30)
    assert counter.per_text and counter.count_text("a short reply.") == 4


def test_without_per_text_counts_learning_changes_nothing() -> None:
    # (fmai serve counts this way: what one process has seen must not change its counts)
    told, untold = ChatCounter(estimate_tokens, per_text=False), ChatCounter(estimate_tokens)
    told.learn("a short reply.", 4)
    msgs = [Message("user", "hello there"), Message("assistant", "a short reply.")]
    for counter in (told, untold):
        counter.observe(msgs, 30)
    assert not told.per_text and not untold.per_text
    assert told(msgs) == untold(msgs) and told.count_text("a short reply.") != 4


def test_a_part_of_a_known_message_is_counted_as_its_share() -> None:
    counter = ChatCounter(estimate_tokens)
    long = "The first sentence is here. " * 6 + "And the second one is the last."
    counter.learn(long, 40)
    counter.observe([Message("user", "hi"), Message("assistant", long)], 70)
    tail = long[len("The first sentence is here. ") :]
    share = counter.count_text(tail)
    assert share < 40 and share >= 40 * estimate_tokens(tail) // estimate_tokens(long)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60).filter(
            str.strip
        ),
        min_size=2,
        max_size=12,
    )
)
def test_the_parts_of_a_message_cost_what_the_message_costs(sentences: list[str]) -> None:
    counter = TokenCounter(EchoBackend())
    text = ". ".join(s.strip() for s in sentences) + "."
    parts = segment_message(
        "user",
        text,
        counter=counter,
        splitter=lambda t: [p + "." for p in t.split(".") if p],
        max_tokens=8,
        first_id=0,
        message_id=0,
        turn=0,
    )
    assert sum(p.tokens for p in parts) == counter.message(text)
    assert "".join((p.sep if i else "") + p.text for i, p in enumerate(parts)) == text


def test_counting_while_other_threads_learn() -> None:
    # a policy worker abandoned at its deadline may count while the next turn learns
    import threading

    counter = ChatCounter(estimate_tokens)
    texts = [f"Message number {i}: " + "some words here " * (i % 7 + 1) for i in range(400)]
    errors: list[BaseException] = []

    def learn() -> None:
        try:
            for i, t in enumerate(texts):
                counter.learn(t, 5 + i % 9)
                counter.observe([Message("user", "q"), Message("assistant", t)], 40 + i % 9)
        except BaseException as exc:
            errors.append(exc)

    def count() -> None:
        try:
            for t in texts * 3:
                counter.count_text(t[5:])
                counter([Message("user", t)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (learn, count, count)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors


def test_conversations_with_and_without_a_system_prompt_share_a_backend() -> None:
    # SmolLM2's template adds its default system prompt where the messages bring none, so
    # the template's fixed part differs between the two: each shape has its own
    with FakeLlamaServer(CORPUS, reply, counting=False) as srv:
        backend = OpenAIBackend("smollm2", base_url=srv.base_url)
        chats = [
            FiniteMemoryLLM(backend, policy="sliding", max_tokens=384, max_new_tokens=64),
            FiniteMemoryLLM(
                backend,
                policy="sliding",
                max_tokens=384,
                max_new_tokens=64,
                system_prompt="You are terse.",
            ),
        ]
        ratios = []
        for i in range(24):
            llm = chats[i % 2]
            planned = llm.context(user_message(i))
            ours = backend.count_tokens(planned)
            llm.chat(user_message(i))
            assert srv.served[-1].prompt_tokens + 64 <= 384, f"turn {i} over the budget"
            if i >= 2:
                ratios.append(ours / srv.served[-1].prompt_tokens)
        assert 1.0 <= statistics.median(ratios) <= 1.06, ratios
