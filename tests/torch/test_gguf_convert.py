"""GGUF conversion: a tiny Llama written as llama.cpp would, converted back, must match."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")
gguf = pytest.importorskip("gguf", reason="GGUF conversion needs the gguf package")

from fmai_torch.gguf_convert import convert_gguf  # noqa: E402

CORPUS = [
    "hello world, my name is ada and my sister is eve.",
    "the river runs through the old city of paris in 1999.",
    "<|im_start|>user\nhi there<|im_end|>\n",
] * 20
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _permute(w: object, n_head: int) -> object:
    """llama.cpp's converter permutation of a query/key projection."""
    rows = w.shape[0]  # type: ignore[attr-defined]
    return (
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])  # type: ignore[attr-defined]
        .swapaxes(1, 2)
        .reshape(w.shape)  # type: ignore[attr-defined]
    )


def _write_gguf(path: Path) -> tuple[object, object]:
    """Write a tiny random Llama + byte-level BPE tokenizer as GGUF; return (model, tokenizer)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS, trainer)
    data = json.loads(bpe.to_str())
    vocab = data["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    types = [3 if t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>") else 1 for t in tokens]
    reference = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>")

    torch.manual_seed(0)
    n_head, n_kv = 4, 2
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=n_head, num_key_value_heads=n_kv, max_position_embeddings=512,
        rope_theta=50000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    sd = {k: v.detach().numpy().astype("float32") for k, v in model.state_dict().items()}

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|im_end|>"))
    w.add_unk_token_id(tokens.index("<|endoftext|>"))
    w.add_chat_template(TEMPLATE)
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }  # fmt: skip
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(2):
        for hf, short in names.items():
            array = sd[f"model.layers.{i}.{hf}.weight"]
            if short == "attn_q":
                array = _permute(array, n_head)
            elif short == "attn_k":
                array = _permute(array, n_kv)
            w.add_tensor(f"blk.{i}.{short}.weight", array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, reference


def test_round_trip(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    source = tmp_path / "tiny.gguf"
    model, reference = _write_gguf(source)
    out = tmp_path / "converted"
    steps: list[str] = []
    convert_gguf(source, out, report=steps.append)
    assert steps and (out / "model.safetensors").is_file()

    converted = LlamaForCausalLM.from_pretrained(str(out)).eval()
    assert converted.config.rope_parameters["rope_theta"] == 50000.0
    original = model.state_dict()  # type: ignore[attr-defined]
    for name, tensor in converted.state_dict().items():
        assert torch.equal(tensor, original[name]), name  # the q/k permutation is undone

    tok = AutoTokenizer.from_pretrained(str(out))
    text = "hello world, my name is ada and I was born in 1987."
    assert tok(text, add_special_tokens=False)["input_ids"] == reference(text)["input_ids"]  # type: ignore[operator]
    assert tok.decode(tok(text)["input_ids"]) == text
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids  # specials stay whole
    assert tok.eos_token == "<|im_end|>"


def test_not_llama_is_refused(tmp_path: Path) -> None:
    from fmai_core.errors import ConfigurationError

    path = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConfigurationError, match="llama"):
        convert_gguf(path, tmp_path / "out")
