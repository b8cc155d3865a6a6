"""HFBackend: exact counts, real streaming, async twins, sampling parameters, stops."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

from fmai_core.backend import (
    AsyncBackend,
    Backend,
    Embedder,
    ImportanceScorer,
    Summarizer,
    TextCounter,
)
from fmai_core.errors import BackendError, ConfigurationError
from fmai_core.messages import Message

MESSAGES = [Message("system", "you are a cat ."), Message("user", "hello , what is my name ?")]


def test_protocols(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    for proto in (Backend, AsyncBackend, TextCounter, ImportanceScorer, Embedder, Summarizer):
        assert isinstance(b, proto)
    assert b.tokenizer_id.startswith("hf:") and b.tokenizer_id == make_backend().tokenizer_id


def test_count_tokens_is_the_prompt_length(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    rendered = b.tokenizer.apply_chat_template(
        [m.to_dict() for m in MESSAGES], tokenize=False, add_generation_prompt=True
    )
    expected = len(b.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert b.count_tokens(MESSAGES) == expected
    assert b.generate(MESSAGES, max_new_tokens=2).usage.prompt_tokens == expected
    assert b.count_text("hello , my name is ada") == 6


def test_stream_yields_pieces_before_the_end(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    chunks = list(b.stream(MESSAGES, max_new_tokens=12, min_new_tokens=12))
    final = chunks[-1].generation
    assert final is not None and all(c.generation is None for c in chunks[:-1])
    texts = [c.text for c in chunks[:-1]]
    assert len(texts) >= 6  # one piece per word, not one block at the end
    assert "".join(texts) == final.text
    assert final.usage.completion_tokens == 12
    assert 0 < final.ttft_ms <= final.latency_ms
    assert final.text == make_backend(kv_reuse=False).generate(MESSAGES, max_new_tokens=12).text


def test_stream_closed_early_leaves_backend_usable(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    stream = b.stream(MESSAGES, max_new_tokens=40, min_new_tokens=40)
    next(stream)
    stream.close()
    again = b.generate(MESSAGES, max_new_tokens=5)
    assert (
        again.extra["token_ids"]
        == make_backend(kv_reuse=False).generate(MESSAGES, max_new_tokens=5).extra["token_ids"]
    )


async def test_async_twins(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    sync = make_backend(kv_reuse=False).generate(MESSAGES, max_new_tokens=8)
    gen = await b.agenerate(MESSAGES, max_new_tokens=8)
    assert gen.text == sync.text
    pieces = [c async for c in b.astream(MESSAGES, max_new_tokens=8)]
    assert pieces[-1].generation is not None
    assert "".join(c.text for c in pieces) == sync.text
    assert pieces[-1].generation.usage.reused_tokens > 0
    await asyncio.sleep(0)


def test_max_new_tokens_and_finish_reason(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    gen = b.generate(MESSAGES, max_new_tokens=3, min_new_tokens=3)
    assert gen.usage.completion_tokens == 3
    assert gen.finish_reason == "length"


def test_stops_at_end_of_turn(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    eos = b.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eos in b.eos_ids
    for seed in range(6):  # sampled replies that end on the end-of-turn token
        gen = b.generate(MESSAGES, max_new_tokens=60, temperature=3.0, seed=seed)
        ids = gen.extra["token_ids"]
        if ids and ids[-1] == eos:
            assert gen.finish_reason == "stop"
            assert "<|im_end|>" not in gen.text
            return
    pytest.fail("no sampled reply ended on <|im_end|> within 60 tokens")


def test_sampling_parameters_are_honoured(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend(kv_reuse=False)
    greedy = b.generate(MESSAGES, max_new_tokens=10, min_new_tokens=10).text
    a = b.generate(MESSAGES, max_new_tokens=10, min_new_tokens=10, temperature=2.0, seed=1)
    c = b.generate(MESSAGES, max_new_tokens=10, min_new_tokens=10, temperature=2.0, seed=1)
    d = b.generate(MESSAGES, max_new_tokens=10, min_new_tokens=10, temperature=2.0, seed=2)
    assert a.text == c.text  # the seed fixes the sample
    assert len({greedy, a.text, d.text}) > 1  # sampling changes the output
    narrow = b.generate(
        MESSAGES, max_new_tokens=10, min_new_tokens=10, temperature=2.0, top_k=1, seed=3
    )
    assert narrow.text == greedy  # top_k=1 is greedy whatever the temperature


def test_stop_strings_cut_the_reply(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend(kv_reuse=False)
    full = b.generate(MESSAGES, max_new_tokens=12, min_new_tokens=12).text
    words = full.split()
    stop = words[3]
    cut = b.generate(MESSAGES, max_new_tokens=12, min_new_tokens=12, stop=[stop])
    assert stop not in cut.text and full.startswith(cut.text)
    assert cut.finish_reason == "stop"
    streamed = list(make_backend().stream(MESSAGES, max_new_tokens=12, stop=stop))
    assert "".join(c.text for c in streamed) == cut.text


def test_prompt_longer_than_context_is_a_clear_error(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    long = [Message("user", "hello " * 5000)]
    with pytest.raises(BackendError, match="context"):
        b.generate(long, max_new_tokens=4)


def test_loaded_model_needs_tokenizer(tiny_parts) -> None:  # type: ignore[no-untyped-def]
    from fmai_torch import HFBackend

    with pytest.raises(ConfigurationError, match="tokenizer"):
        HFBackend(tiny_parts[0])


def test_loads_from_folder(tiny_dir: str) -> None:
    from fmai_torch import HFBackend

    b = HFBackend(tiny_dir, device="cpu", dtype="float64")
    assert b.name == tiny_dir.rsplit("/", 1)[-1]
    assert b.generate(MESSAGES, max_new_tokens=3).usage.prompt_tokens == b.count_tokens(MESSAGES)


def test_stream_yields_while_generation_is_still_running(
    make_backend, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The first piece arrives while `generate` is provably not finished (no timing involved)."""
    import threading

    b = make_backend(kv_reuse=False)
    release = threading.Event()
    original = b.model.forward
    calls = 0

    def gated_forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls > 3:  # after the prefill and two decode steps, wait for the test
            assert release.wait(timeout=60)
        return original(*args, **kwargs)

    monkeypatch.setattr(b.model, "forward", gated_forward)
    stream = b.stream(MESSAGES, max_new_tokens=8, min_new_tokens=8)
    first = next(stream)
    assert first.text and first.generation is None
    assert not release.is_set()  # generation is blocked in its 4th forward pass right now
    release.set()
    rest = list(stream)
    assert rest[-1].generation is not None
    assert rest[-1].generation.usage.completion_tokens == 8


def _gate_after(monkeypatch: pytest.MonkeyPatch, tokens: int):  # type: ignore[no-untyped-def]
    """Make the generating thread wait for the test once it has made `tokens + 1` tokens
    (every decoding loop hands each token to the stream): returns (reached, release,
    made) where `made()` counts the tokens handed over so far."""
    import threading

    from fmai_torch.streaming import TokenStreamer

    reached, release = threading.Event(), threading.Event()
    original = TokenStreamer.push
    count = [0]

    def gated_push(self, ids):  # type: ignore[no-untyped-def]
        count[0] += len(ids)
        if count[0] > tokens and not reached.is_set():
            reached.set()
            assert release.wait(timeout=60)
        return original(self, ids)

    monkeypatch.setattr(TokenStreamer, "push", gated_push)
    return reached, release, lambda: count[0]


async def _long_call(b, how: str) -> None:  # type: ignore[no-untyped-def]
    """A 200-token reply through `agenerate` or read from `astream` to its end."""
    if how == "agenerate":
        await b.agenerate(MESSAGES, max_new_tokens=200, min_new_tokens=200)
    else:
        async for _ in b.astream(MESSAGES, max_new_tokens=200, min_new_tokens=200):
            pass


@pytest.mark.parametrize("how", ["agenerate", "astream"])
async def test_cancelled_async_call_stops_the_model(
    make_backend, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:  # type: ignore[no-untyped-def]
    """Cancelling `agenerate` or a task reading `astream` stops generation after the token
    being made, and returns only once the model is free (before, `agenerate` returned at
    once and the model went on to the end of the reply; `astream` failed to close its
    running generator, raised BackendError and went on too)."""
    b = make_backend()
    reached, release, made = _gate_after(monkeypatch, 4)

    task = asyncio.create_task(_long_call(b, how))
    assert await asyncio.to_thread(reached.wait, 60)  # blocked at its 5th token
    task.cancel()
    # the cancellation reaches the call while its token waits (long enough for a close of
    # the stream to be tried then, which failed before)
    await asyncio.sleep(0.2)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _model_free(b)  # nothing runs on
    assert made() <= 6  # of the 200 tokens the reply would have taken
    again = b.generate(MESSAGES, max_new_tokens=5)  # the cache is exact after the stop
    assert (
        again.extra["token_ids"]
        == make_backend(kv_reuse=False).generate(MESSAGES, max_new_tokens=5).extra["token_ids"]
    )


async def test_cancelled_turn_stops_the_model_and_stores_nothing(
    make_backend, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """`FiniteMemoryLLM.achat` on a local model, cancelled mid-reply (as `fmai serve` does
    when a client hangs up): the model stops and the turn is not stored."""
    from fmai_core import FiniteMemoryLLM

    b = make_backend()
    llm = FiniteMemoryLLM(b, max_tokens=1024, max_new_tokens=400)
    await llm.achat("hello , my name is ada .", max_new_tokens=4)
    reached, release, made = _gate_after(monkeypatch, 3)
    task = asyncio.create_task(llm.achat("what is my name ?", min_new_tokens=400))
    assert await asyncio.to_thread(reached.wait, 60)
    task.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _model_free(b)  # nothing runs on
    assert made() <= 5
    assert llm.stats.turns == 1 and len(llm.messages()) == 2
    done = await llm.achat("what is my name ?", max_new_tokens=4)
    assert done.stats.turn == 1


def _model_free(b) -> bool:  # type: ignore[no-untyped-def]
    free = b.handle.lock.acquire(blocking=False)
    if free:
        b.handle.lock.release()
    return bool(free)


async def _a_few_passes() -> None:
    """Let the event loop run a few times (what a cancellation needs to go through)."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.parametrize("how", ["agenerate", "astream"])
async def test_a_second_cancel_still_waits_for_the_model(
    make_backend, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:  # type: ignore[no-untyped-def]
    """A cancellation that arrives twice (a second `cancel()`; an anyio cancel scope
    repeats its cancel on every pass of the loop) still returns only once the model is
    free (before, the second one went on at once, the model still making its token)."""
    b = make_backend()
    reached, release, made = _gate_after(monkeypatch, 4)

    task = asyncio.create_task(_long_call(b, how))
    assert await asyncio.to_thread(reached.wait, 60)
    task.cancel()
    await _a_few_passes()
    task.cancel()
    await _a_few_passes()
    assert not task.done()  # its token is still being made
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _model_free(b)
    assert made() <= 6


async def test_a_cancelled_turn_whose_cancel_repeats_holds_the_conversation_to_the_end(
    make_backend, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """`achat` cancelled twice mid-reply: the conversation is handed on only once the model
    is free (a turn waiting for it starts then), and nothing is stored."""
    from fmai_core import FiniteMemoryLLM

    b = make_backend()
    llm = FiniteMemoryLLM(b, max_tokens=1024, max_new_tokens=400)
    await llm.achat("hello , my name is ada .", max_new_tokens=4)
    reached, release, made = _gate_after(monkeypatch, 3)
    task = asyncio.create_task(llm.achat("what is my name ?", min_new_tokens=400))
    assert await asyncio.to_thread(reached.wait, 60)
    task.cancel()
    await _a_few_passes()
    task.cancel()
    await _a_few_passes()
    assert not task.done()
    assert llm._turn._held  # the conversation is not handed on while the model runs
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _model_free(b) and not llm._turn._held
    assert made() <= 5
    assert llm.stats.turns == 1 and len(llm.messages()) == 2


@pytest.mark.parametrize("engine", [False, True])
async def test_closing_a_stream_early_waits_for_the_model(
    make_backend, monkeypatch: pytest.MonkeyPatch, engine: bool
) -> None:  # type: ignore[no-untyped-def]
    """`aclose()` of `astream` (what `break` in `async with aclosing(...)` does) returns once
    the model has stopped, and `FiniteMemoryLLM.astream` hands the conversation on only
    then (before, the inner stream was left to the garbage collector: the close returned
    at once, the model still generating and the conversation free)."""
    from fmai_core import FiniteMemoryLLM

    b = make_backend()
    llm = FiniteMemoryLLM(b, max_tokens=1024, max_new_tokens=400)
    reached, release, made = _gate_after(monkeypatch, 4)
    if engine:
        stream = llm.astream("what is my name ?", min_new_tokens=400)
    else:
        stream = b.astream(MESSAGES, max_new_tokens=200, min_new_tokens=200)
    await anext(stream)
    assert await asyncio.to_thread(reached.wait, 60)
    closing = asyncio.create_task(stream.aclose())  # type: ignore[attr-defined]
    await _a_few_passes()
    assert not closing.done()  # the token being made is waited for
    assert not engine or llm._turn._held
    release.set()
    await closing
    assert _model_free(b) and not llm._turn._held
    assert made() <= 6
    if engine:
        assert llm.stats.turns == 0
        assert (await llm.achat("what is my name ?", max_new_tokens=3)).stats.turn == 0


@pytest.mark.parametrize("how", ["agenerate", "astream"])
async def test_a_call_cancelled_while_waiting_for_the_model_runs_nothing(
    make_backend, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:  # type: ignore[no-untyped-def]
    """A conversation's call cancelled while another conversation's turn has the model
    ends without waiting for that turn, and never runs (before, it waited for the other
    reply's end, then prefilled its prompt and made a token that nobody read, in a cache
    the pool made room for)."""
    b = make_backend()
    reached, release, made = _gate_after(monkeypatch, 4)
    one, two = b.conversation("one"), b.conversation("two")
    first = asyncio.create_task(one.agenerate(MESSAGES, max_new_tokens=30, min_new_tokens=30))
    assert await asyncio.to_thread(reached.wait, 60)

    async def read() -> None:
        if how == "agenerate":
            await two.agenerate(MESSAGES, max_new_tokens=30)
        else:
            async for _ in two.astream(MESSAGES, max_new_tokens=30):
                pass

    waiting = asyncio.create_task(read())
    await _a_few_passes()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 60)  # while the first reply is still held
    assert not first.done()
    release.set()
    assert (await first).usage.completion_tokens == 30
    assert made() == 30  # the first reply's tokens, none of the cancelled call's
    assert "two" not in b.pool and _model_free(b)
    again = await two.agenerate(MESSAGES, max_new_tokens=5)
    assert (
        again.extra["token_ids"]
        == make_backend(kv_reuse=False).generate(MESSAGES, max_new_tokens=5).extra["token_ids"]
    )
