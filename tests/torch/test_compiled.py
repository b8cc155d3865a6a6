"""Compiled decoding (static cache, `torch.compile`) gives exactly the tokens of `generate`.

On the CPU the tests use `compile="eager"`: dynamo traces the same full graph as on CUDA and
runs it without code generation, so the static-cache loop, the copy of the cross-turn cache
into it and back, streaming and stop strings are all checked, in float64.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

from fmai_core import Message
from fmai_torch.compiled import capacity, resolve_compile

TURNS = [
    "hello , my name is ada and my sister is called eve .",
    "i live in paris with two cats and a dog .",
    "what is the name of my sister ?",
]


def test_compiled_turns_equal_generate_with_and_without_reuse(make_backend) -> None:  # type: ignore[no-untyped-def]
    plain = make_backend(compile=False)
    compiled = make_backend(compile="eager")
    fresh = make_backend(compile="eager", kv_reuse=False)
    messages = [Message("system", "you are a good friend .")]
    for text in TURNS:
        messages.append(Message("user", text))
        a = plain.generate(messages, max_new_tokens=16)
        b = compiled.generate(messages, max_new_tokens=16)
        c = fresh.generate(messages, max_new_tokens=16)
        assert b.extra["decode"]["loop"] == "compiled"
        assert a.extra["token_ids"] == b.extra["token_ids"] == c.extra["token_ids"]
        assert a.text == b.text
        assert a.usage == b.usage
        assert compiled.cached_tokens == plain.cached_tokens
        messages.append(Message("assistant", a.text))


def test_compiled_stream_stop_and_min_tokens(make_backend) -> None:  # type: ignore[no-untyped-def]
    plain = make_backend(compile=False)
    compiled = make_backend(compile="eager")
    msgs = [Message("user", TURNS[0])]
    full = plain.generate(msgs, max_new_tokens=12, min_new_tokens=12)
    chunks = list(compiled.stream(msgs, max_new_tokens=12, min_new_tokens=12))
    gen = chunks[-1].generation
    assert gen is not None and gen.extra["token_ids"] == full.extra["token_ids"]
    assert "".join(c.text for c in chunks) == full.text
    words = full.text.split()
    if len(words) >= 3:
        stop = words[2]
        a = plain.generate(msgs, max_new_tokens=12, stop=[stop])
        b = compiled.generate(msgs, max_new_tokens=12, stop=[stop])
        assert a.text == b.text and stop not in b.text
        assert a.extra["token_ids"] == b.extra["token_ids"]


def test_compile_switch_and_capacities() -> None:
    import torch

    assert resolve_compile("auto", torch.device("cpu")) is None
    assert resolve_compile("auto", torch.device("cuda")) == "inductor"
    assert resolve_compile(False, torch.device("cuda")) is None
    assert resolve_compile("eager", torch.device("cpu")) == "eager"
    assert [capacity(n) for n in (1, 1024, 1025, 1537, 2049, 8320)] == [
        1024,
        1024,
        1536,
        2048,
        3072,
        12288,
    ]
    assert capacity(3000, limit=4000) == 3072 and capacity(3500, limit=4000) == 4000
