"""The lean decode loop gives exactly the tokens of `generate`, fused or not, reuse on or off.

The tiny model runs in float64 (see conftest), the quantized copies in their int8/int4
layouts: in both the lean loop must match `generate` token for token, because it runs the
same operations (and the fused products are checked bit for bit against the separate ones).
"""

from __future__ import annotations

import copy
import sys

import pytest

torch = pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

from fmai_core import Message  # noqa: E402
from fmai_torch import HFBackend  # noqa: E402
from fmai_torch.lean import LeanDecoder, lean_support  # noqa: E402
from fmai_torch.quant import int4_available, quantize_linears  # noqa: E402

TURNS = [
    "hello , my name is ada and my sister is called eve .",
    "i live in paris with two cats and a dog .",
    "what is the name of my sister ?",
]
MODES = [
    "float",
    "int8",
    pytest.param(
        "int4",
        marks=pytest.mark.skipif(not int4_available(), reason="needs torch CPU int4 kernels"),
    ),
]


def _model(tiny_parts, mode: str):  # type: ignore[no-untyped-def]
    model, tokenizer = tiny_parts
    if mode != "float":
        model = copy.deepcopy(model)
        assert quantize_linears(model, mode) > 0
    return model, tokenizer


@pytest.mark.parametrize("mode", MODES)
def test_lean_turns_equal_generate_with_and_without_reuse(tiny_parts, mode: str) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = _model(tiny_parts, mode)
    assert lean_support(model) is None
    plain = HFBackend(model, tokenizer=tokenizer, lean=False)
    lean = HFBackend(model, tokenizer=tokenizer)
    fresh = HFBackend(model, tokenizer=tokenizer, kv_reuse=False)
    assert lean.lean and fresh.lean and not plain.lean
    fused = lean._decoder.fused  # type: ignore[union-attr]
    # int8 fuses every group; int4 where the packed row blocks line up (gate/up here)
    layers = model.config.num_hidden_layers
    assert fused == {"float": 0, "int8": 2 * layers}.get(mode, fused) and (mode == "float") == (
        fused == 0
    )
    messages = [Message("system", "you are a good friend .")]
    for turn, text in enumerate(TURNS):
        messages.append(Message("user", text))
        a = plain.generate(messages, max_new_tokens=16)
        b = lean.generate(messages, max_new_tokens=16)
        c = fresh.generate(messages, max_new_tokens=16)
        assert a.extra["decode"]["loop"] == "generate"
        assert b.extra["decode"]["loop"] == "lean" == c.extra["decode"]["loop"]
        assert b.extra["decode"]["quantized"] == (mode == "int8")  # int4 qkv rows unfused
        assert a.extra["token_ids"] == b.extra["token_ids"] == c.extra["token_ids"]
        assert a.text == b.text and a.usage == b.usage
        assert lean.cached_tokens == plain.cached_tokens
        if turn:
            assert b.usage.reused_tokens > 0
        messages.append(Message("assistant", a.text))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_lean_step_is_the_forward_bit_for_bit(  # type: ignore[no-untyped-def]
    tiny_parts, mode: str, dtype: str, attention: str
) -> None:
    from transformers import DynamicCache

    from fmai_torch import lean
    from fmai_torch.kv import cache_kwarg

    model, tokenizer = tiny_parts
    model = copy.deepcopy(model).to(getattr(torch, dtype))
    model.set_attn_implementation(attention)
    model, _ = _model((model, tokenizer), mode)
    kw = cache_kwarg()
    decoder = LeanDecoder(model, kw)
    # int8 fuses every group here, so its steps take the quantized path (the norm in one
    # `rms_norm` call where the model is float32); the int4 query/key/value rows do not fuse
    assert decoder.quantized == (mode == "int8")
    if decoder.quantized:
        assert decoder._q is not None
        if sys.platform.startswith("linux"):  # its weights moved into memory for huge pages
            assert decoder.huge_pages
            assert model.lm_head.qweight.untyped_storage().data_ptr() == (
                model.model.layers[0].self_attn.o_proj.qweight.untyped_storage().data_ptr()
            )
        expected = lean._rms_norm_into if dtype == "float32" else lean._norm_into
        assert decoder._q.norm is expected
    ids = torch.tensor([[5, 9, 14, 30, 7, 11]])
    with torch.inference_mode():
        ours, theirs = DynamicCache(), DynamicCache()
        for cache in (ours, theirs):
            model(input_ids=ids, **{kw: cache})
        token = torch.tensor([[21]])
        position = ids.shape[1]
        for room in (0, 3):  # the cache's own update, then views of buffers with room
            if room:
                decoder.begin(ours, room)
            for _ in range(3):
                a = decoder.step(token, position, ours)
                b = model(input_ids=token, **{kw: theirs}).logits[:, -1, :]
                assert torch.equal(a, b)
                token, position = a.argmax(-1, keepdim=True), position + 1
            decoder.finish(ours)
        assert all(layer.keys.is_contiguous() for layer in ours.layers)
        for x, y in zip(ours.layers, theirs.layers):
            assert torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)


def test_lean_stream_stop_and_min_tokens(make_backend) -> None:  # type: ignore[no-untyped-def]
    plain = make_backend(lean=False)
    lean = make_backend()
    msgs = [Message("user", TURNS[0])]
    full = plain.generate(msgs, max_new_tokens=12, min_new_tokens=12)
    chunks = list(lean.stream(msgs, max_new_tokens=12, min_new_tokens=12))
    gen = chunks[-1].generation
    assert gen is not None and gen.extra["token_ids"] == full.extra["token_ids"]
    assert gen.extra["decode"]["loop"] == "lean"
    assert "".join(c.text for c in chunks) == full.text
    words = full.text.split()
    assert len(words) >= 3
    stop = words[2]
    a = plain.generate(msgs, max_new_tokens=12, stop=[stop])
    b = lean.generate(msgs, max_new_tokens=12, stop=[stop])
    assert a.text == b.text and stop not in b.text
    assert a.extra["token_ids"] == b.extra["token_ids"]
    penalty = lean.generate(msgs, max_new_tokens=4, repetition_penalty=1.3)
    assert penalty.extra["decode"] == {"loop": "generate", "why": "repetition_penalty"}
