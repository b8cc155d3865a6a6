"""Convert a llama-architecture GGUF file into a Hugging Face model folder.

transformers can read GGUF itself (`gguf_file=`), but it dequantizes on every load and needs
`accelerate`. fmai converts once, with the `gguf` package, into a plain folder
(`config.json`, `model.safetensors`, tokenizer files) that later loads in about a second.

The conversion undoes what llama.cpp's converter did: it dequantizes every tensor to
float32, renames tensors to the Hugging Face Llama names and reverses the row permutation
llama.cpp applies to the query and key projections. The tokenizer is rebuilt from the
file's vocabulary and merges as a byte-level BPE with the pre-tokenizer the file names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmai_core.errors import ConfigurationError

__all__ = ["CONVERTER_VERSION", "convert_gguf", "pack_gguf_int4"]

#: Bumped when the output of the conversion changes; cached folders of another version are redone.
CONVERTER_VERSION = 1

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_CONTROL = 3  # llama.cpp token type of special tokens such as <|im_end|>
_USER_DEFINED = 4


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def _unpermute(w: Any, n_head: int) -> Any:
    """Reverse llama.cpp's `permute` of a query or key projection (rows grouped per head)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str:
    stem, _, suffix = name.rpartition(".")
    if stem.startswith("blk."):
        _, index, part = stem.split(".", 2)
        if part not in _LAYER_NAMES:
            raise ConfigurationError(
                f"Unknown tensor {name!r} in the GGUF file: not a llama model."
            )
        return f"model.layers.{index}.{_LAYER_NAMES[part]}.{suffix}"
    if stem not in _TOP_NAMES:
        raise ConfigurationError(f"Unknown tensor {name!r} in the GGUF file: not a llama model.")
    return f"{_TOP_NAMES[stem]}.{suffix}"


def _build_tokenizer(reader: Any, out: Path) -> dict[str, Any]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ConfigurationError(
            "Only byte-level BPE (GGUF tokenizer 'gpt2') tokenizers are converted; "
            "load this model from a Hugging Face folder instead."
        )
    tokens: list[str] = list(_field(reader, "tokenizer.ggml.tokens"))
    types: list[int] = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    tok = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if _field(reader, "tokenizer.ggml.pre") == "smollm":
        # SmolLM's tokenizer splits digits one by one before the GPT-2 byte-level split.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types)
            if k == _CONTROL
        ]
    )
    tok.add_tokens(
        [AddedToken(t, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED]
    )

    def special(key: str) -> str | None:
        index = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(index)] if index is not None else None

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special("bos"),
        eos_token=special("eos"),
        unk_token=special("unknown"),
        pad_token=special("padding") or special("eos"),
        chat_template=_field(reader, "tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out))
    return {
        "bos": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad": _field(reader, "tokenizer.ggml.padding_token_id"),
        "vocab": len(tokens),
    }


def convert_gguf(path: Path, out: Path, report: Callable[[str], None] = lambda _: None) -> None:
    """Convert the llama-architecture GGUF file `path` into the Hugging Face folder `out`.

    Args:
        path: The `.gguf` file.
        out: An empty (or new) folder to write into.
        report: Called with a short description of each step (for a progress display).

    Raises:
        ConfigurationError: The file is not a llama model with a byte-level BPE tokenizer.
    """
    import gguf
    import numpy as np
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig

    import torch

    out.mkdir(parents=True, exist_ok=True)
    report("reading the GGUF file")
    reader = gguf.GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ConfigurationError(
            f"fmai converts llama-architecture GGUF files only; {path.name} is {arch!r}. "
            "Load that model from a Hugging Face folder or hub id instead."
        )
    n_head = int(_field(reader, "llama.attention.head_count"))
    n_kv = int(_field(reader, "llama.attention.head_count_kv", n_head))
    report("building the tokenizer")
    special = _build_tokenizer(reader, out)
    report("dequantizing the weights")
    tensors: dict[str, Any] = {}
    for t in reader.tensors:
        array = np.ascontiguousarray(
            gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32
        )
        if t.name.endswith("attn_q.weight"):
            array = _unpermute(array, n_head)
        elif t.name.endswith("attn_k.weight"):
            array = _unpermute(array, n_kv)
        tensors[_hf_name(t.name)] = torch.from_numpy(array.copy())
    tied = "lm_head.weight" not in tensors
    embed = tensors["model.embed_tokens.weight"]
    # transformers 4 takes `rope_theta` (and would ignore `rope_parameters`); 5 declares only
    # `rope_parameters` but still turns a `rope_theta` keyword into them. The keyword serves
    # both, passed through a dict because mypy checks it against 5's declared fields.
    rope: dict[str, Any] = {"rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0))}
    config = LlamaConfig(
        vocab_size=int(embed.shape[0]),
        hidden_size=int(_field(reader, "llama.embedding_length")),
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        max_position_embeddings=int(_field(reader, "llama.context_length", 2048)),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        **rope,
        tie_word_embeddings=tied,
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
        pad_token_id=special["pad"],
    )
    config.architectures = ["LlamaForCausalLM"]
    report("writing the converted model")
    config.save_pretrained(str(out))
    GenerationConfig(
        bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"]
    ).save_pretrained(str(out))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "fmai-source.json").write_text(
        json.dumps({"gguf": path.name, "converter": CONVERTER_VERSION}, indent=2) + "\n"
    )


def pack_gguf_int4(
    path: Path, out_file: Path, report: Callable[[str], None] = lambda _: None
) -> int:
    """Pack the linear layers of a llama GGUF file into torch's int4 CPU format.

    Q4_1 tensors go from their blocks straight into [`Int4Linear`][fmai_torch.quant.Int4Linear]
    buffers (`scale = d`, `zero = m + 8 d`), never through float32 weights; the query and key
    rows are reordered as in [`convert_gguf`][fmai_torch.gguf_convert.convert_gguf]. Other
    linear weights (the output head, a tied embedding, other quantization types) are
    dequantized and stored as per-channel int8. The norms and the embedding are not written:
    they load from the converted folder's `model.safetensors`.

    Returns:
        The number of layers packed as int4.
    """
    import gguf
    import numpy as np
    from safetensors.torch import save_file

    import torch
    from fmai_torch.quant import Int4Linear, Int8Linear, int4_fits

    report("packing int4 weights")
    reader = gguf.GGUFReader(str(path))
    n_head = int(_field(reader, "llama.attention.head_count"))
    n_kv = int(_field(reader, "llama.attention.head_count_kv", n_head))
    q41 = gguf.GGMLQuantizationType.Q4_1
    tensors: dict[str, Any] = {}
    packed = 0
    names = {t.name for t in reader.tensors}
    for t in reader.tensors:
        hf = _hf_name(t.name)
        linear = hf.endswith("_proj.weight") or hf == "lm_head.weight"
        if t.name == "token_embd.weight" and "output.weight" not in names:
            hf, linear = "lm_head.weight", True  # tied: the head gets its own int8 copy
        if not linear:
            continue
        heads = n_head if t.name.endswith("attn_q.weight") else n_kv
        permuted = t.name.endswith(("attn_q.weight", "attn_k.weight"))
        prefix = hf[: -len(".weight")]
        rows = int(t.data.shape[0])
        cols = int(t.shape[0])  # GGUF lists the fastest axis first: shape is [in, out]
        if t.tensor_type == q41 and hf != "lm_head.weight" and int4_fits(rows, cols):
            from fmai_torch.quant import unpack_q4_1

            q, d, m = unpack_q4_1(t.data)
            if permuted:
                q, d, m = (torch.from_numpy(_unpermute(x.numpy(), heads)) for x in (q, d, m))
            layer: Any = Int4Linear.from_blocks(q, d, m)
            packed += 1
        else:
            array = np.ascontiguousarray(
                gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32
            )
            if permuted:
                array = _unpermute(array, heads)
            layer = Int8Linear.from_float(torch.from_numpy(array.copy()))
        tensors[f"{prefix}.qweight"] = layer.qweight.contiguous()
        tensors[
            f"{prefix}.scales" if isinstance(layer, Int8Linear) else f"{prefix}.scales_and_zeros"
        ] = (layer.scales if isinstance(layer, Int8Linear) else layer.scales_and_zeros).contiguous()
    report("writing the packed weights")
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "fmai-int4", "torch": torch.__version__})
    tmp.replace(out_file)
    return packed
