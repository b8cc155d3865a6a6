"""KV-level editing (`kv_edit="rerotate"` / `"keep-positions"`), checked in float64.

The references are fresh prefills of the model itself: a re-rotated key must equal the key
the model computes for the same token, with the same context, at its new position.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

from conftest import HYBRID_STABLE  # noqa: E402

from fmai_core import FiniteMemoryLLM, Message  # noqa: E402
from fmai_torch import HFBackend  # noqa: E402
from fmai_torch.kv import KVCache, attention_bias  # noqa: E402
from fmai_torch.kv_edit import RopeEditor, edit_support, plan_edit  # noqa: E402

ROPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}


def _llama(rope: dict[str, object] | None, exact: bool = True, vocab: int = 64):  # type: ignore[no-untyped-def]
    """A 3-layer random Llama in float64 with the given RoPE scaling.

    `exact`: its rotary module computes the angles in float64 (transformers computes them
    in float32, which makes a prefill at shifted positions differ from the original by
    about 1e-6 in the deeper layers, whatever the cache does).
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    class Float64Rotary(LlamaRotaryEmbedding):
        def forward(self, x, position_ids):  # type: ignore[no-untyped-def]
            freqs = position_ids[..., None].double() * self.inv_freq.double()
            emb = torch.cat((freqs, freqs), dim=-1)
            scale = self.attention_scaling
            return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)

    torch.manual_seed(1)
    kwargs: dict[str, object] = {}
    if rope is not None:
        kwargs["rope_parameters"] = {"rope_theta": 10000.0, **rope}
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.2,
        **kwargs,
    )
    model = LlamaForCausalLM(config)
    if exact:
        model.model.rotary_emb = Float64Rotary(config)
    return model.to(torch.float64).eval()


def _prefill(model, ids: list[int], positions: list[int] | None = None):  # type: ignore[no-untyped-def]
    from transformers import DynamicCache

    cache = DynamicCache()
    kwargs = {}
    if positions is not None:
        kwargs["position_ids"] = torch.tensor([positions])
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), use_cache=True, cache=cache, **kwargs)
    return cache


def _hold(kv: KVCache, model, ids: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Make `kv` hold a fresh prefill of `ids` at positions `0..n-1`."""
    kv._cache = _prefill(model, ids)
    kv.ids, kv.positions = list(ids), list(range(len(ids)))


def _tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 64, (n,), generator=g).tolist()


@pytest.mark.parametrize("rope", list(ROPES))
@pytest.mark.parametrize("shift", [37, -21])
def test_rotation_equals_fresh_prefill_at_new_positions(rope: str, shift: int) -> None:
    """Every layer: keys moved by `shift` equal the model's own keys at the new positions."""
    model = _llama(ROPES[rope])
    assert edit_support(model) is None
    editor = RopeEditor(model)
    ids = _tokens(48, seed=2)
    start = 30
    at = _prefill(model, ids, list(range(start, start + len(ids))))
    moved = _prefill(model, ids, list(range(start + shift, start + shift + len(ids))))
    old = torch.arange(start, start + len(ids))
    for a, b in zip(at.layers, moved.layers):
        rotated = editor.rotate(a.keys, old, old + shift)
        assert (rotated - b.keys).abs().max().item() < 1e-9
        assert (a.values - b.values).abs().max().item() < 1e-9  # RoPE leaves values alone
        assert (a.keys - b.keys).abs().max().item() > 1e-3  # the rotation did something


@pytest.mark.parametrize("rope", list(ROPES))
def test_cut_cache_equals_fresh_prefill(rope: str) -> None:
    """Cut a block out of [prefix, block, tail] and re-rotate: the tail's keys and values, in
    every layer, equal a fresh prefill of the same tokens at their new positions, and layer
    0 (whose keys depend on the token alone) equals a fresh prefill of [prefix, tail]."""
    model = _llama(ROPES[rope])
    prefix, block, tail = _tokens(20, 3), _tokens(17, 4), _tokens(30, 5)
    full = prefix + block + tail
    kv = KVCache("rerotate", RopeEditor(model))
    _hold(kv, model, full)
    ready = kv.prepare(prefix + tail + _tokens(5, 6))
    assert ready.reused == len(prefix) + len(tail)
    assert ready.position_ids is None  # positions stay 0..n-1
    assert ready.info["applied"] == "rerotate" and ready.info["cut_tokens"] == len(block)
    assert ready.info["rotated_tokens"] == len(tail)
    # the same tokens with the same context, prefilled at their new positions
    b = len(block)
    reference = _prefill(model, full, [i - b for i in range(len(full))])
    p = len(prefix)
    for layer, ref, orig in zip(ready.cache.layers, reference.layers, _prefill(model, full).layers):
        assert torch.equal(layer.keys[..., :p, :], orig.keys[..., :p, :])  # prefix untouched
        assert (layer.keys[..., p:, :] - ref.keys[..., p + b :, :]).abs().max() < 1e-9
        assert torch.equal(layer.values[..., p:, :], orig.values[..., p + b :, :])
    fresh = _prefill(model, prefix + tail)
    assert (ready.cache.layers[0].keys - fresh.layers[0].keys).abs().max() < 1e-9
    assert (ready.cache.layers[0].values - fresh.layers[0].values).abs().max() < 1e-9


@pytest.mark.parametrize("rope", list(ROPES))
def test_stock_rotary_layer0_equals_fresh_prefill(rope: str) -> None:
    """With transformers' own (float32-angle) rotary module: a cut and re-rotated cache's
    layer 0, whose keys depend on the token and its position alone, equals a fresh prefill."""
    model = _llama(ROPES[rope], exact=False)
    prefix, block, tail = _tokens(20, 3), _tokens(40, 4), _tokens(60, 5)
    kv = KVCache("rerotate", RopeEditor(model))
    kv._cache = _prefill(model, prefix + block + tail)
    kv.ids = prefix + block + tail
    kv.positions = list(range(len(kv.ids)))
    ready = kv.prepare(prefix + tail + [7])
    assert ready.reused == len(prefix) + len(tail)
    fresh = _prefill(model, prefix + tail)
    assert (ready.cache.layers[0].keys - fresh.layers[0].keys).abs().max() < 1e-9


def test_a_token_computed_between_kept_runs() -> None:
    """A kept run whose first token changed (a message part that now starts a message): the
    changed token is computed in place, the run after it re-rotated; layer 0 equals a fresh
    prefill, and every layer's prefix is untouched."""
    model = _llama(ROPES["llama3"])
    prefix, block, tail = _tokens(20, 3), _tokens(17, 4), _tokens(30, 5)
    full = prefix + block + tail
    kv = KVCache("rerotate", RopeEditor(model))
    kv.forward = _forward_with(model)
    _hold(kv, model, full)
    changed = [63 if tail[0] != 63 else 62, *tail[1:]]
    prompt = prefix + changed + [9]
    ready = kv.prepare(prompt)
    assert ready.info["applied"] == "rerotate" and ready.info["computed_between"] == 1
    assert ready.reused == len(prefix) + len(tail) and kv.ids == prompt[:-1]
    fresh = _prefill(model, prompt[:-1])
    assert (ready.cache.layers[0].keys - fresh.layers[0].keys).abs().max() < 1e-9
    assert (ready.cache.layers[0].values - fresh.layers[0].values).abs().max() < 1e-9
    p = len(prefix)
    for layer, ref in zip(ready.cache.layers, fresh.layers):
        assert torch.equal(layer.keys[..., :p, :], ref.keys[..., :p, :])
        # the computed token saw exactly the prefix, as in the fresh prefill
        assert (layer.keys[..., p, :] - ref.keys[..., p, :]).abs().max() < 1e-9
    # without a forward function (keep-positions never computes in between) it stops there
    plain = KVCache("rerotate", RopeEditor(model))
    _hold(plain, model, full)
    assert plain.prepare(prompt).reused == len(prefix)


def test_repeated_edits_do_not_drift() -> None:
    """Ten edits in a row end where one edit removing the same tokens ends (1e-9)."""
    model = _llama(ROPES["llama3"])
    ids = _tokens(160, 7)
    step = KVCache("rerotate", RopeEditor(model))
    step._cache = _prefill(model, ids)
    step.ids, step.positions = list(ids), list(range(len(ids)))
    removed: set[int] = set()
    current = list(range(len(ids)))  # original indices still in the cache
    for k in range(10):
        cut = current[10 + 10 * k : 14 + 10 * k]  # four tokens, ten later each time
        removed.update(cut)
        current = [i for i in current if i not in removed]
        ready = step.prepare([ids[i] for i in current] + [5])
        assert ready.info["applied"] == "rerotate" and ready.info["cut_tokens"] == 4
        assert ready.reused == len(current)
    once = KVCache("rerotate", RopeEditor(model))
    once._cache = _prefill(model, ids)
    once.ids, once.positions = list(ids), list(range(len(ids)))
    ready = once.prepare([ids[i] for i in current] + [5])
    assert ready.info["runs"] > 2
    fresh = _prefill(model, [ids[i] for i in current])
    for a, b in zip(step._cache.layers, once._cache.layers):
        assert (a.keys - b.keys).abs().max() < 1e-9
        assert torch.equal(a.values, b.values)
    assert (step._cache.layers[0].keys - fresh.layers[0].keys).abs().max() < 1e-9


def test_plan_edit_finds_removed_blocks() -> None:
    old = list(range(100))
    new = old[:10] + old[30:60] + old[75:] + [500, 501]
    edit = plan_edit(old, new, prefix=10)
    assert edit.runs == ((0, 10), (30, 60), (75, 100))
    assert edit.kept == 10 + 30 + 25 and edit.cut == 35
    # a short coincidental match is not kept history
    assert plan_edit(old, [*old[:10], 900, 40, 41, 42, *old[50:]], prefix=10).kept == 10


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


@pytest.mark.parametrize("mode", ["rerotate", "keep-positions"])
def test_greedy_identical_to_recompute_until_an_edit(make_backend, mode: str) -> None:  # type: ignore[no-untyped-def]
    """Turns that edit nothing are token-identical to recompute; eviction turns edit the
    cache (and then reuse more than recompute), and say so in the stats."""
    kwargs = {
        "policy": "sliding",
        "max_tokens": 160,
        "max_new_tokens": 16,
        "system_prompt": "you are a good friend .",
    }
    edit = FiniteMemoryLLM(make_backend(kv_edit=mode), **kwargs)
    plain = FiniteMemoryLLM(make_backend(kv_edit="recompute"), **kwargs)
    edited = 0
    for i in range(12):
        a, b = edit.chat(USER_TURNS[i % 8]), plain.chat(USER_TURNS[i % 8])
        assert a.stats.kv["mode"] == mode and b.stats.kv["mode"] == "recompute"
        assert a.stats.reused_tokens + a.stats.prefill_tokens == a.stats.prompt_tokens
        if a.stats.kv["applied"] == mode:  # the first edit: the replies part from here
            edited += 1
            assert a.stats.evicted and a.stats.kv["cut_tokens"] > 0
            assert a.stats.prompt_tokens == b.stats.prompt_tokens
            assert a.stats.reused_tokens > b.stats.reused_tokens + 30
            break
        assert a.response == b.response
        assert a.stats.reused_tokens == b.stats.reused_tokens
    assert edited == 1
    assert "fallback" not in a.stats.kv


def test_keep_positions_generates_with_gaps(make_backend, tiny_parts) -> None:  # type: ignore[no-untyped-def]
    """After a keep-positions cut the model continues at the old positions: the backend's
    greedy tokens equal a hand-written greedy loop over the same cut cache and position ids."""
    model, _ = tiny_parts
    backend = make_backend(kv_edit="keep-positions")
    system = Message("system", "you are a good friend .")
    history = [Message("user", USER_TURNS[0])]
    first = backend.generate([system, *history], max_new_tokens=10)
    history.append(Message("assistant", first.text))
    history += [Message("user", USER_TURNS[1])]
    second = backend.generate([system, *history], max_new_tokens=10)
    history.append(Message("assistant", second.text))
    before = (list(backend._kv.ids), list(backend._kv.positions))
    messages = [system, *history[2:], Message("user", USER_TURNS[2])]
    prompt = backend.encode(messages)
    third = backend.generate(messages, max_new_tokens=8)
    info = third.extra["kv"]
    assert info["applied"] == "keep-positions" and info["cut_tokens"] > 0
    # the reference: the same cut by hand, then a greedy loop with explicit positions
    ids, positions = before
    edit = plan_edit(ids, prompt, prefix=_common(ids, prompt))
    index = [i for a, b in edit.runs for i in range(a, b)]
    cache = _prefill(model, ids, positions)
    for layer in cache.layers:
        layer.keys = layer.keys[..., index, :]
        layer.values = layer.values[..., index, :]
    pos = [positions[i] for i in index]
    assert pos[-1] + 1 > len(index)  # there is a gap
    nxt, todo, out = pos[-1] + 1, prompt[len(index) :], []
    with torch.inference_mode():
        for _ in range(8):
            p = list(range(nxt, nxt + len(todo)))
            logits = model(
                input_ids=torch.tensor([todo]),
                position_ids=torch.tensor([p]),
                cache=cache,
                use_cache=True,
            ).logits
            tok = int(logits[0, -1].argmax())
            out.append(tok)
            nxt += len(todo)
            todo = [tok]
            if tok in backend.eos_ids:
                break
    assert third.extra["token_ids"] == out


def _common(a: list[int], b: list[int]) -> int:
    from fmai_torch.kv import common_prefix

    return common_prefix(a, b)


def test_unsupported_attention_falls_back_to_recompute(tiny_parts) -> None:  # type: ignore[no-untyped-def]
    """A sliding-window model recomputes under kv_edit='rerotate', and says so."""
    from transformers import MistralConfig, MistralForCausalLM

    _, tokenizer = tiny_parts
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=4096,
        max_position_embeddings=4096,
    )
    model = MistralForCausalLM(config).to(torch.float64).eval()
    assert edit_support(model) == "sliding-window attention layers"
    kwargs = {"policy": "sliding", "max_tokens": 160, "max_new_tokens": 12}
    edit = FiniteMemoryLLM(HFBackend(model, tokenizer=tokenizer, kv_edit="rerotate"), **kwargs)
    plain = FiniteMemoryLLM(HFBackend(model, tokenizer=tokenizer), **kwargs)
    for i in range(10):
        a, b = edit.chat(USER_TURNS[i % 8]), plain.chat(USER_TURNS[i % 8])
        assert a.response == b.response and a.stats.reused_tokens == b.stats.reused_tokens
        assert a.stats.kv["applied"] == "recompute"
        assert a.stats.kv["fallback"] == "sliding-window attention layers"
    assert edit.stats.evictions > 0


def test_non_rope_model_is_refused_by_edit_support() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert "not a known full-RoPE decoder" in str(edit_support(model))
    with pytest.raises(ValueError, match="cannot be edited"):
        RopeEditor(model)


def test_bad_mode_is_a_clear_error(make_backend) -> None:  # type: ignore[no-untyped-def]
    from fmai_core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="kv_edit must be one of"):
        make_backend(kv_edit="shift")
    # kept evictions below one splice's worth could never be spliced back
    for bad in (8, -5):
        with pytest.raises(ConfigurationError, match="kv_keep_evicted must be 0"):
            make_backend(kv_edit="rerotate", kv_keep_evicted=bad)


def _forward_with(model):  # type: ignore[no-untyped-def]
    def forward(
        ids: list[int], positions: list[int], cache: object, visible: object = None
    ) -> None:
        extra = {}
        if visible is not None:  # the backend's additive mask
            extra["attention_mask"] = attention_bias(visible, model.dtype)
        with torch.inference_mode():
            model(
                input_ids=torch.tensor([ids]),
                position_ids=torch.tensor([positions]),
                cache=cache,
                use_cache=True,
                **extra,
            )

    return forward


def test_evicted_tokens_are_spliced_back_where_they_come_again() -> None:
    """keep_evicted: a block cut out by one edit and sent again later (a recalled segment)
    comes back from the kept keys and values, re-rotated to its new place; the tokens
    before it are computed. Layer 0 (whose keys and values depend on the token and its
    position only) equals a fresh prefill of the new prompt; the prompt's start is untouched
    in every layer."""
    model = _llama(ROPES["llama3"])
    prefix, block, tail = _tokens(20, 3), _tokens(40, 4), _tokens(30, 5)
    full = prefix + block + tail
    kv = KVCache("rerotate", RopeEditor(model), keep_evicted=256)
    kv.forward = _forward_with(model)
    _hold(kv, model, full)
    first = kv.prepare(prefix + tail + [9])  # the block is evicted
    assert first.reused == len(prefix + tail) and "from_evicted" not in first.info
    header = [11, 12]
    prompt = prefix + tail + header + block + [9]  # and recalled
    ready = kv.prepare(prompt)
    assert ready.info["from_evicted"] == len(block)
    assert ready.info["computed_between"] == len(header)
    assert ready.reused == len(prompt) - 1 and kv.ids == prompt[:-1]
    # a run shorter than `splice_after_gap` after computed tokens is left to prefill
    short = KVCache("rerotate", RopeEditor(model), keep_evicted=256)
    short.forward = kv.forward
    short.splice_after_gap = 32
    _hold(short, model, full)
    short.prepare(prefix + tail + [9])
    assert "from_evicted" not in short.prepare(prefix + tail + header + block[:24] + [9]).info
    fresh = _prefill(model, prompt[:-1])
    assert (ready.cache.layers[0].keys - fresh.layers[0].keys).abs().max() < 1e-9
    assert (ready.cache.layers[0].values - fresh.layers[0].values).abs().max() < 1e-9
    p = len(prefix)
    for layer, ref in zip(ready.cache.layers, fresh.layers):
        assert torch.equal(layer.keys[..., :p, :], ref.keys[..., :p, :])
    # in every layer, the block is the one first computed, rotated from where it stood
    editor, original = RopeEditor(model), _prefill(model, full)
    a, n, at = len(prefix), len(block), len(prefix + tail + header)
    old, new = torch.arange(a, a + n), torch.arange(at, at + n)
    for layer, ref in zip(ready.cache.layers, original.layers):
        want = editor.rotate(ref.keys[..., a : a + n, :], old, new)
        assert (layer.keys[..., at : at + n, :] - want).abs().max() < 1e-9
        assert torch.equal(layer.values[..., at : at + n, :], ref.values[..., a : a + n, :])
    # off (the default), and in the other modes, nothing is kept
    assert KVCache("rerotate", RopeEditor(model)).keep_evicted == 0
    assert KVCache("recompute", keep_evicted=256).keep_evicted == 0
    assert KVCache("keep-positions", RopeEditor(model), keep_evicted=256).keep_evicted == 0


def test_gaps_between_spliced_runs_are_computed_in_one_pass() -> None:
    """Two evicted blocks recalled, each after a label: both labels go through the model in
    one forward pass with a mask, and every layer equals the cache built one step at a
    time (label computed on the cache as it stands, then the block appended, re-rotated):
    each label token saw exactly what precedes it in the prompt (float64, 1e-9)."""
    model = _llama(ROPES["llama3"])
    editor = RopeEditor(model)
    prefix, first, second, tail = _tokens(20, 3), _tokens(30, 4), _tokens(25, 6), _tokens(30, 5)
    full = prefix + first + second + tail
    kv = KVCache("rerotate", editor, keep_evicted=256)
    calls: list[int] = []
    forward = _forward_with(model)

    def counting(ids, positions, cache, visible=None):  # type: ignore[no-untyped-def]
        calls.append(len(ids))
        forward(ids, positions, cache, visible)

    kv.forward = counting
    _hold(kv, model, full)
    assert kv.prepare(prefix + tail + [9]).reused == len(prefix + tail)  # both blocks out
    ref = _prefill(model, prefix + tail)  # the edited cache, copied: the reference's start
    for layer, edited in zip(ref.layers, kv._cache.layers):
        layer.keys, layer.values = edited.keys.clone(), edited.values.clone()
    one, two = [11, 12, 13], [14, 15]
    prompt = prefix + tail + one + first + two + second + [9]
    ready = kv.prepare(prompt)
    assert ready.info["from_evicted"] == len(first) + len(second)
    assert ready.info["computed_between"] == len(one) + len(two)
    assert calls == [len(one) + len(two)]  # one forward pass for both labels
    assert ready.reused == len(prompt) - 1 and kv.ids == prompt[:-1]
    # the same cache built step by step
    original = _prefill(model, full)
    at = len(prefix + tail)
    for label, start, block in ((one, len(prefix), first), (two, len(prefix + first), second)):
        forward(label, list(range(at, at + len(label))), ref)
        at += len(label)
        old = torch.arange(start, start + len(block))
        new = torch.arange(at, at + len(block))
        for layer, src in zip(ref.layers, original.layers):
            piece = src.keys[..., start : start + len(block), :]
            layer.keys = torch.cat([layer.keys, editor.rotate(piece, old, new)], dim=-2)
            piece = src.values[..., start : start + len(block), :]
            layer.values = torch.cat([layer.values, piece], dim=-2)
        at += len(block)
    for layer, want in zip(ready.cache.layers, ref.layers):
        assert layer.keys.shape == want.keys.shape
        assert (layer.keys - want.keys).abs().max() < 1e-9
        assert (layer.values - want.values).abs().max() < 1e-9


def test_gaps_one_pass_each_without_masks_give_the_same_cache() -> None:
    """`batch_gaps` off (attention that takes no custom mask): each label is computed on its
    own, right before its block, and the cache equals the one-pass result (float64)."""
    model = _llama(ROPES["llama3"])
    prefix, first, second, tail = _tokens(20, 3), _tokens(30, 4), _tokens(25, 6), _tokens(30, 5)
    full = prefix + first + second + tail
    prompt = prefix + tail + [11, 12, 13] + first + [14, 15] + second + [9]
    caches, calls = [], []
    for batch in (True, False):
        kv = KVCache("rerotate", RopeEditor(model), keep_evicted=256)
        kv.batch_gaps = batch
        forward = _forward_with(model)

        def counting(ids, positions, cache, visible=None, forward=forward, batch=batch):  # type: ignore[no-untyped-def]
            calls.append((batch, len(ids), visible is None))
            forward(ids, positions, cache, visible)

        kv.forward = counting
        _hold(kv, model, full)
        kv.prepare(prefix + tail + [9])
        ready = kv.prepare(prompt)
        assert ready.reused == len(prompt) - 1 and ready.info["from_evicted"] == 55
        caches.append(ready.cache)
    assert calls == [(True, 5, False), (False, 3, True), (False, 2, True)]
    for a, b in zip(caches[0].layers, caches[1].layers):
        assert (a.keys - b.keys).abs().max() < 1e-9
        assert (a.values - b.values).abs().max() < 1e-9


def test_keep_evicted_through_the_engine(make_backend) -> None:  # type: ignore[no-untyped-def]
    """hybrid, stable layout, rerotate with kept evictions: recalled segments come back from
    the kept keys and values, the stats count only cache-served tokens as reused, the budget
    holds; recompute ignores the setting and stays token-identical to reuse off."""
    kwargs = {**HYBRID_STABLE, "max_tokens": 384, "max_new_tokens": 16}
    edit = FiniteMemoryLLM(make_backend(kv_edit="rerotate", kv_keep_evicted=4096), **kwargs)
    on = FiniteMemoryLLM(make_backend(kv_keep_evicted=4096), **kwargs)
    off = FiniteMemoryLLM(make_backend(kv_reuse=False), **kwargs)
    spliced = 0
    for i in range(24):
        text = USER_TURNS[i % len(USER_TURNS)]
        r = edit.chat(text)
        s = r.stats
        assert s.prompt_tokens + 16 <= 384
        assert s.reused_tokens + s.prefill_tokens == s.prompt_tokens
        spliced += s.kv.get("from_evicted", 0)
        a, b = on.chat(text), off.chat(text)
        assert a.response == b.response
        assert "from_evicted" not in a.stats.kv
    assert spliced > 0


def test_an_error_in_the_middle_of_an_edit_or_splice_drops_the_cache() -> None:
    """The model raising while an edit or a splice computes tokens between runs (out of
    memory in its second layer, here) leaves layers of different lengths behind. The cache
    must be dropped, not trusted by the next turn: here the edit's two computed tokens make
    layer 0 as long as the old ids, so a length check alone would serve the broken cache."""
    model = _llama(ROPES["llama3"])
    prefix, one, two = _tokens(20, 3), _tokens(20, 4), _tokens(20, 5)
    old = [*prefix, 60, *one, 61, *two]
    prompt = [*prefix, 62, *one, 63, *two, 9]  # the first word of each run changed
    failing = {"on": False}

    def out_of_memory(module, args):  # type: ignore[no-untyped-def]
        if failing["on"]:
            raise RuntimeError("out of memory")

    hook = model.model.layers[1].register_forward_pre_hook(out_of_memory)
    try:
        kv = KVCache("rerotate", RopeEditor(model), keep_evicted=256)
        kv.forward = _forward_with(model)
        kv._cache = _prefill(model, old)
        kv.ids, kv.positions = list(old), list(range(len(old)))
        failing["on"] = True
        with pytest.raises(RuntimeError, match="out of memory"):
            kv.prepare(prompt)
        failing["on"] = False
        assert len(kv) == 0 and kv.evicted_tokens == 0
        again = kv.prepare([*old, 5, 6])
        assert again.reused == 0  # recomputed, never the half-edited layers
        # the same through a splice of kept evicted tokens
        full = prefix + one + two
        _hold(kv, model, full)
        assert kv.prepare(prefix + two + [9]).reused == len(prefix + two)  # `one` is kept
        assert kv.evicted_tokens == len(one)
        failing["on"] = True
        with pytest.raises(RuntimeError, match="out of memory"):
            kv.prepare(prefix + two + [11, 12] + one + [9])
        failing["on"] = False
        assert len(kv) == 0 and kv.evicted_tokens == 0
        assert kv.prepare(prefix + two + [11, 12] + one + [9]).reused == 0
    finally:
        hook.remove()


def test_keep_evicted_smaller_than_a_run_keeps_its_last_tokens() -> None:
    """A `keep_evicted` smaller than the block an edit cuts keeps the block's last tokens
    (it kept nothing at all, whatever the budget, when the block did not fit whole), and
    the budget holds oldest out first across turns."""
    model = _llama(ROPES["llama3"])
    prefix, block, tail, more = _tokens(20, 3), _tokens(40, 4), _tokens(30, 5), _tokens(12, 8)
    full = prefix + block + tail + more
    kv = KVCache("rerotate", RopeEditor(model), keep_evicted=24)
    kv.forward = _forward_with(model)
    _hold(kv, model, full)
    assert kv.prepare([*prefix, *tail, *more, 9]).reused == len(prefix + tail + more)
    assert kv.evicted_tokens == 24
    assert [ids for ids, _, _ in kv._evicted] == [block[-24:]]
    # an eviction of 12 more: they are the newest, the block keeps its last 12
    assert kv.prepare([*prefix, *tail, 9]).reused == len(prefix + tail)
    assert [ids for ids, _, _ in kv._evicted] == [block[-12:], more]
    assert all(k.shape[-2] == 12 for _, _, part in kv._evicted for k, _ in part)
    prompt = [*prefix, *tail, 11, *block[-12:], *more, 9]
    ready = kv.prepare(prompt)
    assert ready.info["from_evicted"] == 24 and ready.reused == len(prompt) - 1
    fresh = _prefill(model, prompt[:-1])
    assert (ready.cache.layers[0].keys - fresh.layers[0].keys).abs().max() < 1e-9


def test_the_splice_scan_stops_at_the_gap_limit() -> None:
    """Once a turn has its most gaps, the rest of the prompt cannot be spliced: the scan
    stops there, and what was planned before is spliced. (It went on, measuring the whole
    match at every position of a long recalled run and throwing it away: quadratic, a
    12,000-token run after the eighth gap of the one-pass-per-gap rule took 9 s on a busy
    2-core CPU. Speed is not asserted here; this checks the result of the early stop.)"""
    from transformers import DynamicCache

    from fmai_torch.kv import SEQUENTIAL_SPLICE

    model = _llama(None, vocab=4096)
    g = torch.Generator().manual_seed(0)
    prefix, long = _tokens(20, 3), torch.randint(64, 4096, (12000,), generator=g).tolist()
    shorts = [torch.randint(64, 4096, (40,), generator=g).tolist() for _ in range(8)]
    full = prefix + [t for s in shorts for t in s] + long
    kv = KVCache("rerotate", RopeEditor(model), keep_evicted=len(full))
    kv.forward = _forward_with(model)
    kv.batch_gaps = False  # attention without custom masks: one pass per gap, 8 at most
    kv.splice_after_gap, kv.max_splice_gaps = SEQUENTIAL_SPLICE
    cache = DynamicCache()  # keys and values of the right shape (the scan reads only ids)
    for i in range(3):
        kv_shape = (1, 2, len(full), 16)
        cache.update(
            torch.randn(kv_shape, dtype=torch.float64, generator=g),
            torch.randn(kv_shape, dtype=torch.float64, generator=g),
            i,
        )
    kv._cache, kv.ids, kv.positions = cache, list(full), list(range(len(full)))
    assert kv.prepare([*prefix, 9]).reused == len(prefix)
    assert kv.evicted_tokens == len(full) - len(prefix)
    labelled = [t for s in shorts for t in [1, 2, *s]]
    prompt = [*prefix, *labelled, 3, *long, 9]
    ready = kv.prepare(prompt)
    assert ready.info["from_evicted"] == 8 * 40  # the long run comes after the eighth gap
    assert ready.reused == len(prefix) + len(labelled)


def test_an_evicted_run_spliced_twice_and_at_the_prompt_end() -> None:
    """One kept run recalled twice in a prompt that ends with it: both copies come back,
    re-rotated to their own places, the prompt's last token is left to compute (generation
    needs it), and layer 0 equals a fresh prefill of what the cache then holds."""
    model = _llama(ROPES["llama3"])
    prefix, block, tail = _tokens(20, 3), _tokens(30, 4), _tokens(24, 5)
    full = prefix + block + tail
    kv = KVCache("rerotate", RopeEditor(model), keep_evicted=256)
    kv.forward = _forward_with(model)
    _hold(kv, model, full)
    kv.prepare([*prefix, *tail, 9])
    prompt = [*prefix, *tail, 11, *block, 12, 13, *block]  # ends inside the second copy
    ready = kv.prepare(prompt)
    assert ready.reused == len(prompt) - 1 and kv.ids == prompt[:-1]
    assert ready.info["from_evicted"] == 2 * len(block) - 1
    assert ready.info["computed_between"] == 3
    assert {layer.keys.shape[-2] for layer in ready.cache.layers} == {len(prompt) - 1}
    fresh = _prefill(model, prompt[:-1])
    assert (ready.cache.layers[0].keys - fresh.layers[0].keys).abs().max() < 1e-9
    assert (ready.cache.layers[0].values - fresh.layers[0].values).abs().max() < 1e-9
    # a prompt equal to what the cache holds serves all of it but its last token
    again = kv.prepare(list(kv.ids))
    assert again.reused == len(prompt) - 2 and "from_evicted" not in again.info


def test_fresh_run_start_computes_the_first_tokens_of_each_spliced_run() -> None:
    """`KVCache.fresh_run_start = k` (an experiment on kept evictions' quality cost): the
    first k tokens of a spliced run are computed with the gap before it, in the same masked
    pass, instead of reused. After an exact prefix they then equal a fresh prefill in every
    layer, while the reused rest still holds the keys and values made after other text."""
    model = _llama(ROPES["default"])
    prefix, block, tail = _tokens(20, 13), _tokens(40, 14), _tokens(30, 15)
    header, k = [11, 12], 6
    prompt = prefix + header + block + [9]
    fresh = _prefill(model, prompt[:-1])
    caches = {}
    for start in (0, k):
        kv = KVCache("rerotate", RopeEditor(model), keep_evicted=256)
        kv.forward = _forward_with(model)
        kv.fresh_run_start = start
        _hold(kv, model, prefix + block + tail)
        kv.prepare([*prefix, 9])  # the block and the tail are evicted
        ready = kv.prepare(prompt)  # the block is recalled
        assert ready.info["from_evicted"] == len(block) - start
        assert ready.info["computed_between"] == len(header) + start
        assert ready.reused == len(prompt) - 1 and kv.ids == prompt[:-1]
        caches[start] = ready.cache
    at = len(prefix + header)
    for layer, ref in zip(caches[k].layers, fresh.layers):
        for part in ("keys", "values"):
            got, want = getattr(layer, part), getattr(ref, part)
            assert (got[..., : at + k, :] - want[..., : at + k, :]).abs().max() < 1e-9
    # without it, the run's first tokens are the stale ones (past layer 0), as is the rest
    deep, ref = caches[0].layers[-1], fresh.layers[-1]
    assert (deep.values[..., at : at + k, :] - ref.values[..., at : at + k, :]).abs().max() > 1e-6
    rest = caches[k].layers[-1].values[..., at + k :, :]
    assert (rest - ref.values[..., at + k :, :]).abs().max() > 1e-6
