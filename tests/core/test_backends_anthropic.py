"""AnthropicBackend against a real HTTP server on loopback (tests/core/fakeserver.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip(
    "anthropic", reason="needs the Anthropic SDK: pip install 'fmai-core[anthropic]'"
)

from fakeserver import FakeProvider

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backends import AnthropicBackend
from fmai_core.backends.anthropic_messages import to_anthropic
from fmai_core.errors import (
    AuthenticationError,
    BackendError,
    BackendTimeoutError,
    FMAIError,
    RateLimitError,
)

KEY = "sk-ant-test"
MSGS = [
    Message("system", "Be brief."),
    Message("user", "first question"),
    Message("assistant", "first answer"),
    Message("user", "hello there friend"),
]


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with FakeProvider(api_key=KEY) as fp:
        yield fp


@pytest.fixture
def backend(server: FakeProvider) -> Iterator[AnthropicBackend]:
    b = AnthropicBackend("claude-fake", base_url=server.url, api_key=KEY, max_retries=2)
    yield b
    b.close()


def test_system_prompt_goes_in_the_system_field(
    server: FakeProvider, backend: AnthropicBackend
) -> None:
    gen = backend.generate(MSGS, max_new_tokens=32)
    body = server.requests[-1]
    assert gen.text == "reply to: hello there friend"
    assert body["system"] == [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
    ]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["max_tokens"] == 32
    assert gen.finish_reason == "end_turn"


def test_cache_breakpoints_on_the_last_two_user_turns() -> None:
    body = to_anthropic(MSGS)
    marked = [i for i, m in enumerate(body["messages"]) if isinstance(m["content"], list)]
    assert marked == [0, 2]
    plain = to_anthropic(MSGS, cache_control=False)
    assert plain["system"] == "Be brief."
    assert all(isinstance(m["content"], str) for m in plain["messages"])


def test_roles_are_merged_and_start_with_user() -> None:
    msgs = [Message("assistant", "hi"), Message("user", "a"), Message("user", "b")]
    body = to_anthropic(msgs, cache_control=False)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"] == "a\n\nb"


def test_cache_read_tokens_become_reused_tokens(server: FakeProvider) -> None:
    server.block_tokens = 8
    b = AnthropicBackend("claude-fake", base_url=server.url, api_key=KEY)
    system = Message("system", "word " * 40)
    first = b.generate([system, Message("user", "one")])
    second = b.generate([system, Message("user", "two")])
    b.close()
    assert first.usage.reused_tokens == 0
    assert second.usage.reused_tokens == 40
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.usage.prefill_tokens == second.usage.prompt_tokens - 40


def test_stream_and_async(server: FakeProvider, backend: AnthropicBackend) -> None:
    chunks = list(backend.stream(MSGS))
    assert "".join(c.text for c in chunks) == "reply to: hello there friend"
    final = chunks[-1].generation
    assert final is not None
    assert final.usage.completion_tokens == 6
    assert final.finish_reason == "end_turn"


async def test_async_generate_and_stream(server: FakeProvider) -> None:
    b = AnthropicBackend("claude-fake", base_url=server.url, api_key=KEY)
    gen = await b.agenerate(MSGS)
    pieces = [c async for c in b.astream(MSGS)]
    await b.aclose()
    assert "".join(c.text for c in pieces) == gen.text == "reply to: hello there friend"


def test_429_then_success_and_exhausted(server: FakeProvider, backend: AnthropicBackend) -> None:
    server.fail_next("429")
    assert backend.generate(MSGS).text == "reply to: hello there friend"
    server.fail_next("429", times=3)
    with pytest.raises(RateLimitError):
        backend.generate(MSGS)


@pytest.mark.parametrize(
    ("fault", "error"),
    [("500", BackendError), ("malformed", BackendError), ("slow", BackendTimeoutError)],
)
def test_failures_map_to_fmai_errors(
    server: FakeProvider, fault: str, error: type[FMAIError]
) -> None:
    b = AnthropicBackend(
        "claude-fake", base_url=server.url, api_key=KEY, timeout=0.2, max_retries=0
    )
    server.fail_next(fault)
    with pytest.raises(error):
        b.generate(MSGS)
    b.close()


def test_wrong_key(server: FakeProvider) -> None:
    b = AnthropicBackend("claude-fake", base_url=server.url, api_key="sk-ant-wrong-999")
    with pytest.raises(AuthenticationError) as info:
        b.generate(MSGS)
    b.close()
    assert "sk-ant-wrong-999" not in str(info.value)


def test_truncated_stream_raises(server: FakeProvider, backend: AnthropicBackend) -> None:
    server.fail_next("truncate")
    with pytest.raises(BackendError, match="not stored"):
        list(backend.stream(MSGS))


def test_engine_with_anthropic_keeps_memory_consistent(server: FakeProvider) -> None:
    b = AnthropicBackend("claude-fake", base_url=server.url, api_key=KEY, max_retries=0)
    llm = FiniteMemoryLLM(
        b, policy="sliding", max_tokens=400, max_new_tokens=40, system_prompt="Hi."
    )
    assert llm.chat("The code is 4417.").response == "reply to: The code is 4417."
    before = (llm.stats.turns, llm.context("probe"))
    server.fail_next("truncate")
    with pytest.raises(BackendError):
        "".join(llm.stream("Breaks."))
    assert (llm.stats.turns, llm.context("probe")) == before
    b.close()


def test_stalled_stream_times_out(server: FakeProvider) -> None:
    server.fail_next("stall")
    b = AnthropicBackend(
        "claude-fake", base_url=server.url, api_key=KEY, timeout=0.3, max_retries=0
    )
    with pytest.raises(BackendTimeoutError):
        list(b.stream(MSGS))
    b.close()


def test_key_from_environment(server: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    b = AnthropicBackend("claude-fake", base_url=server.url)
    assert b.generate(MSGS).text == "reply to: hello there friend"
    b.close()
    assert KEY not in repr(b)


def test_a_stop_string_is_one_stop_sequence(
    server: FakeProvider, backend: AnthropicBackend
) -> None:
    # stop="END" went out as stop_sequences ["E", "N", "D"]: every reply was cut at its
    # first E, N or D. A string is one sequence, as for the other backends.
    backend.generate(MSGS, max_new_tokens=32, stop="END")
    assert server.requests[-1]["stop_sequences"] == ["END"]
    backend.generate(MSGS, max_new_tokens=32, stop=["END", "STOP"])
    assert server.requests[-1]["stop_sequences"] == ["END", "STOP"]
    llm = FiniteMemoryLLM(backend, policy="sliding", max_tokens=500, max_new_tokens=32)
    llm.chat("hello", stop="Done.")
    assert server.requests[-1]["stop_sequences"] == ["Done."]
