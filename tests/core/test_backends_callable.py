"""CallableBackend: a plain function as a backend, with a pluggable token counter."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backend import AsyncBackend, Backend, TextCounter
from fmai_core.backends import CallableBackend
from fmai_core.errors import BackendError


def shout(messages: Sequence[Message]) -> str:
    return messages[-1].content.upper()


def words(text: str) -> int:
    return len(text.split())


def test_generate_counts_with_the_given_counter() -> None:
    b = CallableBackend(shout, tokenizer=words)
    msgs = [Message("system", "be loud"), Message("user", "hi there")]
    gen = b.generate(msgs)
    assert gen.text == "HI THERE"
    # text (2 + 2) + roles (1 + 1) + 3 per message + 3 for the reply opener
    assert b.count_tokens(msgs) == 4 + 2 + 6 + 3
    assert gen.usage.prompt_tokens == b.count_tokens(msgs)
    assert gen.usage.completion_tokens == 2
    assert b.tokenizer_id == "callable:words"
    assert isinstance(b, Backend)
    assert isinstance(b, AsyncBackend)
    assert isinstance(b, TextCounter)


def test_params_reach_functions_that_declare_them() -> None:
    seen: dict[str, object] = {}

    def fn(messages: Sequence[Message], max_new_tokens: int = 0) -> str:
        seen["max_new_tokens"] = max_new_tokens
        return "ok"

    CallableBackend(fn).generate([Message("user", "x")], max_new_tokens=7, temperature=0.5)
    assert seen == {"max_new_tokens": 7}


def test_stream_rebuilds_the_reply() -> None:
    b = CallableBackend(lambda m: "one two  three")
    chunks = list(b.stream([Message("user", "x")]))
    assert "".join(c.text for c in chunks) == "one two  three"
    assert chunks[-1].generation is not None


async def test_async_twins() -> None:
    b = CallableBackend(shout)
    gen = await b.agenerate([Message("user", "abc")])
    pieces = [c async for c in b.astream([Message("user", "abc def")])]
    assert gen.text == "ABC"
    assert "".join(c.text for c in pieces) == "ABC DEF"


def test_function_errors_become_backend_errors_and_memory_stays() -> None:
    calls = {"n": 0}

    def flaky(messages: Sequence[Message]) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("model crashed")
        return "fine"

    llm = FiniteMemoryLLM(CallableBackend(flaky), policy="sliding", max_tokens=300)
    llm.chat("first")
    before = (llm.stats.turns, llm.context("probe"))
    with pytest.raises(BackendError, match="model crashed"):
        llm.chat("second")
    assert (llm.stats.turns, llm.context("probe")) == before
    assert llm.chat("third").response == "fine"


def test_non_string_reply_is_a_backend_error() -> None:
    b = CallableBackend(lambda m: 42)  # type: ignore[arg-type,return-value]
    with pytest.raises(BackendError, match="not str"):
        b.generate([Message("user", "x")])


def test_default_counter_is_the_estimate() -> None:
    b = CallableBackend(shout)
    assert b.tokenizer_id == "fmai-estimate-v1"
    assert b.exact_count is False
    assert b.count_text("hello world") >= 2
