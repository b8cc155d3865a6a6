"""Model signals: attention importance, embeddings, summaries."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

from fmai_core.messages import Message

TEXTS = ["my sister is called eve .", "the weather is good today .", "i like trains and cars ."]


def test_importance_scores(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    kernel = b.model.config._attn_implementation
    scores = b.score_importance(TEXTS, "what is the name of my sister ?")
    assert len(scores) == 3 and all(s >= 0 and math.isfinite(s) for s in scores)
    assert 0 < sum(scores) <= 1.0 + 1e-9  # attention mass, the sink and query take the rest
    assert b.score_importance([], "hello") == []
    assert b.model.config._attn_implementation == kernel  # eager only during the pass


def test_importance_many_texts_in_groups(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend(signal_tokens=64)
    texts = [f"my friend {w} lives in paris ." for w in ("ada", "eve", "bob", "alice") * 5]
    scores = b.score_importance(texts, "where does eve live ?")
    assert len(scores) == 20 and all(s > 0 for s in scores)


def test_importance_leaves_kv_cache_alone(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    messages = [Message("user", "hello , my name is ada .")]
    b.generate(messages, max_new_tokens=4)
    held = b.cached_tokens
    b.score_importance(TEXTS, "hello")
    b.embed(TEXTS)
    b.summarize("my name is ada . i live in paris .", 8)
    assert b.cached_tokens == held


def test_embeddings(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    vectors = b.embed([*TEXTS, "my sister is called eve ."])
    assert len(vectors) == 4 and len({len(v) for v in vectors}) == 1
    for v in vectors:
        assert abs(sum(x * x for x in v) - 1.0) < 1e-6
    assert vectors[0] == pytest.approx(vectors[3], abs=1e-9)
    # Padding in a batch does not change a text's vector.
    alone = b.embed(["i like trains and cars ."])[0]
    assert alone == pytest.approx(vectors[2], abs=1e-6)


def test_summary_is_generated_text(make_backend) -> None:  # type: ignore[no-untyped-def]
    b = make_backend()
    summary = b.summarize("my name is ada . i live in paris .", 6)
    assert isinstance(summary, str)
    assert len(b.tokenizer(summary, add_special_tokens=False)["input_ids"]) <= 6


def test_generation_and_signals_need_only_the_model_handle(make_backend) -> None:  # type: ignore[no-untyped-def]
    # GenerationRun and ModelSignals read the ModelHandle, never the backend's attributes:
    # built from a handle alone, they give what the backend gives.
    import time

    from fmai_torch.generation import GenerationRun
    from fmai_torch.handle import ModelHandle
    from fmai_torch.kv import KVCache
    from fmai_torch.signals import ModelSignals

    b = make_backend(kv_reuse=False)
    handle = b.handle
    assert isinstance(handle, ModelHandle)
    assert (handle.model, handle.tokenizer, handle.device) == (b.model, b.tokenizer, b.device)
    messages = [Message("user", "hello , my name is ada .")]
    prompt = b.encode(messages)
    expected = b.generate(messages, max_new_tokens=6)
    alone = ModelHandle(
        handle.model,
        handle.tokenizer,
        handle.device,
        handle.name,
        handle.eos_ids,
        handle.pad_id,
        handle.cache_kw,
    )
    params = {"max_new_tokens": 6}
    with alone.lock:
        plain = GenerationRun(alone, prompt, params, None, time.perf_counter()).run()
        cached = GenerationRun(alone, prompt, params, KVCache(), time.perf_counter()).run()
    assert plain.extra["token_ids"] == cached.extra["token_ids"] == expected.extra["token_ids"]
    signals = ModelSignals(alone, generate=b.generate, max_tokens=b.signal_tokens)
    assert signals.score_importance(TEXTS, "hello") == pytest.approx(
        b.score_importance(TEXTS, "hello")
    )
    assert signals.embed(TEXTS[:1])[0] == pytest.approx(b.embed(TEXTS[:1])[0])
