"""Exact budgets against a llama-server stand-in (tests/core/fakellama.py), official SDK.

The server counts with a real BPE tokenizer and SmolLM2's chat template (its default system
prompt included) and reports usage like llama-server; fmai must keep every prompt inside
the budget by *that* count, from the first turn on, with and without the server's
`/tokenize` and `/apply-template`.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterator

import pytest

pytest.importorskip("openai", reason="needs the OpenAI SDK: pip install 'fmai-core[openai]'")

from fakellama import DEFAULT_SYSTEM, FakeLlamaServer

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backends import OpenAIBackend
from fmai_core.backends.tokens import FIRST_CALL_OVERHEAD
from fmai_core.errors import ConfigurationError
from fmai_core.stats import TurnStats

TOPICS = [
    "my sister Ada moved to Paris last spring and works at a bakery",
    "the project deadline is on the 14th of March, not the 12th",
    "our cat Miso refuses to eat anything but salmon",
    "the server room is on the third floor behind the blue door",
    "I planted tomatoes, basil and two kinds of peppers this year",
]


def user_message(i: int) -> str:
    """Turn `i`'s user message: short, long, multi-line, code, CJK and emoji in turn."""
    topic = TOPICS[i % len(TOPICS)]
    kind = i % 6
    if kind == 0:
        return f"Remember this: {topic}."
    if kind == 1:
        return f"Here is a longer note about turn {i}. " + " ".join(
            f"Point {j}: {TOPICS[(i + j) % len(TOPICS)]}." for j in range(6)
        )
    if kind == 2:
        return f"A list for turn {i}:\n- first, {topic}\n- second\n\tindented with a tab\n- third"
    if kind == 3:
        return f"```python\ndef turn_{i}(x):\n    return x * {i}\n```\nWhat does it return?"
    if kind == 4:
        return f"  これは{i}番目のメッセージです。{topic} 🎉  "
    return f"Short one {i}?"


def reply(messages: list[dict[str, str]]) -> str:
    """The model: a multi-line reply that restates the last message's first words."""
    last = messages[-1]["content"].split("\n\n")[-1]
    words = " ".join(last.split()[:12])
    return f"Noted:\n- {words}\n- that is all.\n"


CORPUS = [user_message(i) for i in range(60)] + [reply([{"content": t}]) for t in TOPICS]


@pytest.fixture
def server() -> Iterator[FakeLlamaServer]:
    with FakeLlamaServer(CORPUS, reply) as srv:
        yield srv


def _run(
    srv: FakeLlamaServer,
    max_tokens: int,
    turns: int = 30,
    stream: bool = False,
    count: str = "auto",
    system: str | None = None,
) -> tuple[FiniteMemoryLLM, list[TurnStats]]:
    backend = OpenAIBackend("smollm2", base_url=srv.base_url, count=count)
    llm = FiniteMemoryLLM(
        backend,
        policy="sliding",
        max_tokens=max_tokens,
        max_new_tokens=max_tokens // 6,
        system_prompt=system,
    )
    stats = []
    for i in range(turns):
        if stream:
            for _ in llm.stream(user_message(i)):
                pass
            assert llm.last_stats is not None
            stats.append(llm.last_stats)
        else:
            stats.append(llm.chat(user_message(i)).stats)
    return llm, stats


def test_the_probe_finds_llama_servers_endpoints(server: FakeLlamaServer) -> None:
    backend = OpenAIBackend("smollm2", base_url=server.base_url)
    msgs = [Message("user", "Hi")]
    assert backend.count_tokens(msgs) == server.count([m.to_dict() for m in msgs])
    assert backend.counting == "server:llama.cpp"
    assert backend.tokenizer_id == "server:llama.cpp:smollm2"
    # the default system prompt is in the count, and goes when there is a system message
    with_system = [Message("system", "Be brief."), Message("user", "Hi")]
    assert backend.count_tokens(with_system) == server.count([m.to_dict() for m in with_system])
    assert backend.count_tokens(msgs) > server.count_text(DEFAULT_SYSTEM)
    assert backend.count_text("A list:\n- one\n- two") == server.count_text("A list:\n- one\n- two")


def test_counts_are_cached_per_text(server: FakeLlamaServer) -> None:
    backend = OpenAIBackend("smollm2", base_url=server.base_url)
    backend.count_text("some words here")
    before = server.counting_requests
    for _ in range(5):
        backend.count_text("some words here")
        backend.count_tokens([Message("user", "Hi")])
    assert server.counting_requests - before <= 2


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("counting", [True, False], ids=["tokenize", "no-tokenize"])
@pytest.mark.parametrize("max_tokens", [384, 1024])
def test_no_prompt_over_the_budget_by_the_servers_count(
    max_tokens: int, counting: bool, stream: bool
) -> None:
    with FakeLlamaServer(CORPUS, reply, counting=counting) as srv:
        _, stats = _run(srv, max_tokens, stream=stream)
        assert len(srv.served) == 30
        for i, s in enumerate(srv.served):
            assert s.prompt_tokens + s.max_tokens <= max_tokens, f"turn {i} over the budget"
        assert all(st.prompt_tokens == s.prompt_tokens for st, s in zip(stats, srv.served))


def test_first_turn_without_tokenize_keeps_the_stated_margin(caplog: pytest.LogCaptureFixture):
    with FakeLlamaServer(CORPUS, reply, counting=False) as srv:
        backend = OpenAIBackend("smollm2", base_url=srv.base_url)
        with caplog.at_level(logging.INFO, logger="fmai"):
            first = [Message("user", "Hi")]
            counted = backend.count_tokens(first)
        assert backend.counting == "estimate"
        assert "offers no token counting" in caplog.text
        assert counted >= srv.count([m.to_dict() for m in first])
        assert counted >= FIRST_CALL_OVERHEAD
        # a long first message, with the system prompt the template adds unseen
        llm = FiniteMemoryLLM(backend, policy="sliding", max_tokens=256, max_new_tokens=40)
        llm.chat(user_message(2))
        s = srv.served[0]
        assert s.prompt_tokens + s.max_tokens <= 256


def test_count_server_without_endpoints_is_a_clear_error() -> None:
    with FakeLlamaServer(CORPUS, reply, counting=False) as srv:
        backend = OpenAIBackend("smollm2", base_url=srv.base_url, count="server")
        with pytest.raises(ConfigurationError, match="count='server'"):
            backend.count_tokens([Message("user", "Hi")])
    with pytest.raises(ConfigurationError, match="count must be one of"):
        OpenAIBackend("smollm2", base_url="http://127.0.0.1:9/v1", count="exact")


@pytest.mark.parametrize("counting", [True, False], ids=["tokenize", "no-tokenize"])
def test_the_count_is_within_5_percent_of_the_servers_after_one_turn(counting: bool) -> None:
    with FakeLlamaServer(CORPUS, reply, counting=counting) as srv:
        backend = OpenAIBackend("smollm2", base_url=srv.base_url)
        llm = FiniteMemoryLLM(backend, policy="sliding", max_tokens=1024, max_new_tokens=128)
        errors = []
        for i in range(20):
            text = user_message(i)
            planned = llm.context(text)
            ours = backend.count_tokens(planned)
            llm.chat(text)
            theirs = srv.served[-1].prompt_tokens
            assert srv.served[-1].messages == [m.to_dict() for m in planned]
            if i >= 1:
                errors.append(abs(ours - theirs) / theirs)
        if counting:
            assert max(errors) == 0.0  # the server's own count
        else:
            # fmai's estimate, with the replies and the messages reports pinned down counted
            # by the server's own count: measured 0.5% (median; the affine fit was 5.2%)
            assert statistics.median(errors) <= 0.02, errors


@pytest.mark.parametrize("counting", [True, False], ids=["tokenize", "no-tokenize"])
@pytest.mark.parametrize("max_tokens", [384, 1024])
def test_no_repeated_single_segment_evictions(max_tokens: int, counting: bool) -> None:
    """Evictions come in blocks: never one segment on the turn after another eviction."""
    with FakeLlamaServer(CORPUS, reply, counting=counting) as srv:
        backend = OpenAIBackend("smollm2", base_url=srv.base_url)
        llm = FiniteMemoryLLM(
            backend, policy="sliding", max_tokens=max_tokens, max_new_tokens=max_tokens // 6
        )
        evicted: dict[int, int] = {}  # turn -> segments evicted
        for i in range(30):
            before = len(llm.state.archive)
            if llm.chat(user_message(i)).stats.evicted:
                evicted[i] = len(llm.state.archive) - before
        assert evicted, "30 turns must fill the budget"
        repeated = [i for i, n in evicted.items() if n == 1 and i - 1 in evicted]
        assert not repeated, f"single-segment evictions right after another: {evicted}"
        assert all(n >= 2 for n in evicted.values()), evicted
        # measured: 12 (server count) and 14 (estimate) at 384, 4 and 4 at 1024
        assert len(evicted) <= {384: 15, 1024: 5}[max_tokens], evicted
        # the budget is used before the first eviction (by the server's count)
        first = min(evicted)
        used = max(s.prompt_tokens + s.max_tokens for s in srv.served[:first]) / max_tokens
        # without the server's count, turn 1 is counted from one report (a pure factor,
        # safe but high): measured 0.30 at 384; 0.99 and 0.92 at 1024
        assert used >= (0.8 if counting or max_tokens == 1024 else 0.25), used


def test_estimated_fields_are_marked() -> None:
    # everything reported: nothing estimated
    with FakeLlamaServer(CORPUS, reply) as srv:
        _, stats = _run(srv, 1024, turns=2, stream=True)
        assert all(s.estimated == () for s in stats)
        assert stats[1].reused_tokens is not None and stats[1].reused_tokens > 0
    # a stream without usage (llama-cpp-python): the server still counts the prompt exactly
    with FakeLlamaServer(CORPUS, reply, stream_usage=False) as srv:
        _, stats = _run(srv, 1024, turns=2, stream=True)
        for s, served in zip(stats, srv.served, strict=True):
            assert s.reused_tokens is None
            assert s.reuse_ratio is None
            assert s.prompt_tokens == served.prompt_tokens
            assert set(s.estimated) == {"completion_tokens", "prefill_tokens", "context_tokens"}
    # ... and without the server's counting: the prompt is fmai's estimate too
    with FakeLlamaServer(CORPUS, reply, stream_usage=False, counting=False) as srv:
        llm, stats = _run(srv, 1024, turns=2, stream=True)
        assert "prompt_tokens" in stats[0].estimated
        assert llm.stats.unreported_reuse_turns == 2
    # cached tokens not reported (vLLM without --enable-prompt-tokens-details)
    with FakeLlamaServer(CORPUS, reply, report_cached=False) as srv:
        _, stats = _run(srv, 1024, turns=2)
        assert [s.reused_tokens for s in stats] == [None, None]
        assert all(s.estimated == ("prefill_tokens",) for s in stats)
        assert all(s.prefill_tokens == s.prompt_tokens for s in stats)


def test_history_reaches_the_server_verbatim(server: FakeLlamaServer) -> None:
    backend = OpenAIBackend("smollm2", base_url=server.base_url)
    llm = FiniteMemoryLLM(
        backend, policy="sliding", max_tokens=4096, max_new_tokens=64, segment_tokens=16
    )
    sent = []
    for i in range(6):
        text = user_message(i)
        sent.append(text)
        sent.append(llm.chat(text).response)
    last = server.served[-1].messages
    # every earlier message, split into parts or not, comes back byte for byte
    assert [m["content"] for m in last[:-1]] == sent[:-2]
    assert last[-1]["content"] == sent[-2]
    assert len({s.message_id for s in llm.segments()}) < len(llm.segments())  # some split


def test_cache_reuse_by_the_servers_count(server: FakeLlamaServer) -> None:
    _, stats = _run(server, 1024, turns=20)
    prompt = sum(s.prompt_tokens for s in server.served)
    cached = sum(s.cached_tokens for s in server.served)
    assert [s.reused_tokens for s in stats] == [s.cached_tokens for s in server.served]
    assert cached / prompt >= 0.75
