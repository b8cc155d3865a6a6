"""OpenAIBackend against a real HTTP server on loopback (tests/core/fakeserver.py)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

pytest.importorskip("openai", reason="needs the OpenAI SDK: pip install 'fmai-core[openai]'")

from fakeserver import FakeProvider

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backends import OpenAIBackend
from fmai_core.errors import (
    AuthenticationError,
    BackendError,
    BackendTimeoutError,
    FMAIError,
    RateLimitError,
)

KEY = "sk-test-key"
MSGS = [Message("system", "Be brief."), Message("user", "hello there friend")]


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with FakeProvider(api_key=KEY) as fp:
        yield fp


@pytest.fixture
def backend(server: FakeProvider) -> Iterator[OpenAIBackend]:
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY, max_retries=2)
    yield b
    b.close()


def test_chat_sends_real_messages_and_reads_usage(
    server: FakeProvider, backend: OpenAIBackend
) -> None:
    gen = backend.generate(MSGS, max_new_tokens=32, temperature=0.0)
    assert gen.text == "reply to: hello there friend"
    body = server.requests[-1]
    assert body["messages"] == [m.to_dict() for m in MSGS]
    assert body["max_tokens"] == 32
    assert gen.usage.prompt_tokens == len(server.serialize("", body["messages"]))
    assert gen.usage.completion_tokens == 6
    assert gen.usage.prefill_tokens == gen.usage.prompt_tokens - gen.usage.reused_tokens
    assert gen.finish_reason == "stop"


def test_cached_tokens_become_reused_tokens(server: FakeProvider) -> None:
    server.block_tokens = 8
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY)
    history = [Message("system", "word " * 40)]
    first = b.generate([*history, Message("user", "one")])
    second = b.generate([*history, Message("user", "two")])
    b.close()
    assert first.usage.reused_tokens == 0
    assert second.usage.reused_tokens == 40  # five whole 8-token blocks of the shared prefix
    assert second.usage.prefill_tokens == second.usage.prompt_tokens - 40


def test_stream_yields_deltas_then_generation(backend: OpenAIBackend) -> None:
    chunks = list(backend.stream(MSGS, max_new_tokens=32))
    texts = [c.text for c in chunks if c.text]
    assert texts == ["reply", " to:", " hello", " there", " friend"]
    final = chunks[-1].generation
    assert final is not None
    assert final.text == "".join(texts)
    assert final.usage.prompt_tokens > 0
    assert final.extra["usage_reported"] is True


async def test_async_generate_and_stream(server: FakeProvider) -> None:
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY)
    gen = await b.agenerate(MSGS)
    pieces = [c async for c in b.astream(MSGS)]
    await b.aclose()
    assert gen.text == "reply to: hello there friend"
    assert "".join(c.text for c in pieces) == gen.text
    assert pieces[-1].generation is not None


async def test_awarm_sends_nothing_and_the_next_turn_works(server: FakeProvider) -> None:
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY)
    await b.awarm()
    assert server.requests == []  # a server warms up at start without calling the model
    gen = await b.agenerate(MSGS)
    await b.aclose()
    assert gen.text == "reply to: hello there friend" and len(server.requests) == 1


def test_429_with_retry_after_then_success(server: FakeProvider, backend: OpenAIBackend) -> None:
    server.fail_next("429")
    gen = backend.generate(MSGS)
    assert gen.text == "reply to: hello there friend"
    assert len(server.requests) == 2  # the refused one and the retry


def test_retry_after_is_read_from_the_response(server: FakeProvider) -> None:
    # The retry announces itself, and a Retry-After beyond the SDK's 60 s ceiling is not
    # waited for: the error comes at once instead of after a minute.
    server.fail_next("429")
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY, max_retries=1)
    b.generate(MSGS)
    assert [h["x-stainless-retry-count"] for h in server.headers] == ["0", "1"]
    server.retry_after = "3600"
    server.fail_next("429")
    with pytest.raises(RateLimitError):
        b.generate(MSGS)
    b.close()
    assert len(server.requests) == 3


def test_exhausted_rate_limit_retries_raise(server: FakeProvider, backend: OpenAIBackend) -> None:
    server.fail_next("429", times=3)
    with pytest.raises(RateLimitError, match="429"):
        backend.generate(MSGS)
    assert len(server.requests) == 3


def test_server_error_raises_backend_error(server: FakeProvider) -> None:
    server.fail_next("500", times=5)
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY, max_retries=1)
    with pytest.raises(BackendError, match="HTTP 500"):
        b.generate(MSGS)
    b.close()


def test_timeout_raises_backend_timeout(server: FakeProvider) -> None:
    server.fail_next("slow", times=2)
    b = OpenAIBackend(
        "fake-model", base_url=server.openai_url, api_key=KEY, timeout=0.2, max_retries=1
    )
    with pytest.raises(BackendTimeoutError, match=r"timeout=0\.2s"):
        b.generate(MSGS)
    b.close()


def test_malformed_response_raises_backend_error(
    server: FakeProvider, backend: OpenAIBackend
) -> None:
    server.fail_next("malformed")
    with pytest.raises(BackendError, match="could not use"):
        backend.generate(MSGS)


def test_wrong_key_raises_authentication_error_without_the_key(server: FakeProvider) -> None:
    secret = "sk-wrong-secret-123"
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=secret)
    with pytest.raises(AuthenticationError) as info:
        b.generate(MSGS)
    b.close()
    assert secret not in str(info.value)
    assert secret not in repr(b)


def test_truncated_stream_raises_instead_of_returning(
    server: FakeProvider, backend: OpenAIBackend
) -> None:
    server.fail_next("truncate")
    stream = backend.stream(MSGS)
    first = next(stream)
    assert first.text == "reply"
    assert first.generation is None
    with pytest.raises(BackendError, match="not stored"):
        list(stream)


def test_stalled_stream_times_out(server: FakeProvider) -> None:
    server.fail_next("stall")
    b = OpenAIBackend(
        "fake-model", base_url=server.openai_url, api_key=KEY, timeout=0.3, max_retries=0
    )
    with pytest.raises(BackendTimeoutError):
        list(b.stream(MSGS))
    b.close()


def test_key_from_environment(server: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_PROVIDER_KEY", KEY)
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key_env="MY_PROVIDER_KEY")
    assert b.generate(MSGS).text.startswith("reply to:")
    b.close()
    assert server.headers[-1]["authorization"] == f"Bearer {KEY}"


def test_missing_key_without_base_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o-mini")


# -- through the engine: failures leave memory as it was -------------------------------------


def _snapshot(llm: FiniteMemoryLLM) -> tuple[int, int, list[Message]]:
    return llm.stats.turns, llm.stats.messages, llm.context("probe")


def test_engine_memory_is_unchanged_by_each_failure(server: FakeProvider) -> None:
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY, max_retries=0)
    llm = FiniteMemoryLLM(b, policy="sliding", max_tokens=400, max_new_tokens=40)
    assert llm.chat("My sister is called Ada.").response == "reply to: My sister is called Ada."
    before = _snapshot(llm)
    for fault in ("429", "500", "malformed"):
        server.fail_next(fault)
        with pytest.raises(FMAIError):
            llm.chat("This turn fails.")
        assert _snapshot(llm) == before, fault
    for fault in ("truncate",):
        server.fail_next(fault)
        with pytest.raises(BackendError):
            for _ in llm.stream("This stream breaks."):
                pass
        assert _snapshot(llm) == before, fault
    streamed = "".join(llm.stream("And now it works."))
    assert streamed == "reply to: And now it works."
    assert llm.stats.turns == 2
    b.close()


def test_engine_stream_closed_early_stores_nothing(server: FakeProvider) -> None:
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY)
    llm = FiniteMemoryLLM(b, policy="sliding", max_tokens=400, max_new_tokens=40)
    llm.chat("First.")
    before = _snapshot(llm)
    it = llm.stream("one two three four five")
    next(it)
    it.close()  # the user cancelled after the first token
    assert _snapshot(llm) == before
    b.close()


async def test_engine_async_turn_and_failed_async_turn(server: FakeProvider) -> None:
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY, max_retries=0)
    llm = FiniteMemoryLLM(b, policy="sliding", max_tokens=400, max_new_tokens=40)
    r = await llm.achat("Hello async.")
    assert r.response == "reply to: Hello async."
    before = _snapshot(llm)
    server.fail_next("truncate")
    with pytest.raises(BackendError):
        async for _ in llm.astream("Breaks."):
            pass
    assert _snapshot(llm) == before
    await b.aclose()


def test_api_key_never_reaches_checkpoint_or_turn_log(
    server: FakeProvider, tmp_path: pathlib.Path
) -> None:
    from fmai_core.telemetry.jsonl import JSONLTurnLog

    log_path = tmp_path / "turns.jsonl"
    log = JSONLTurnLog(log_path)
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY)
    llm = FiniteMemoryLLM(b, policy="sliding", max_tokens=400, max_new_tokens=40, hooks=[log])
    r = llm.chat("Remember 42.")
    path = tmp_path / "chat.json"
    llm.save(path)
    b.close()
    close = getattr(log, "close", None)
    if close is not None:
        close()
    assert log_path.read_text().strip()  # the turn was logged
    for text in (path.read_text(), log_path.read_text(), repr(b), repr(r.stats)):
        assert KEY not in text


def test_stream_without_reported_usage_is_estimated(server: FakeProvider) -> None:
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY, stream_usage=False)
    final = list(b.stream(MSGS))[-1].generation
    b.close()
    assert "stream_options" not in server.requests[-1]
    assert final is not None
    assert final.extra["usage_reported"] is False
    assert final.usage.prompt_tokens == b.count_tokens(MSGS)
    assert final.usage.completion_tokens == b.count_text(final.text)


def test_counter_learns_when_the_provider_counts_more(server: FakeProvider) -> None:
    # A counter that sees one token per message text: the provider reports far more.
    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY, tokenizer=lambda t: 1)
    msgs = [Message("user", "word " * 60)]
    before = b.count_tokens(msgs)
    reported = b.generate(msgs).usage.prompt_tokens
    b.close()
    assert reported > before
    assert b.count_tokens(msgs) >= reported


async def test_engine_cancelled_async_stream_stores_nothing(server: FakeProvider) -> None:
    import asyncio

    b = OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY)
    llm = FiniteMemoryLLM(b, policy="sliding", max_tokens=400, max_new_tokens=40)
    await llm.achat("First.")
    before = _snapshot(llm)
    server.fail_next("stall")  # two deltas, then silence
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in llm.astream("This one is cancelled."):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _snapshot(llm) == before
    await b.aclose()
