"""`HFBackend` turns on a GPU: compiled decoding (`compile=True`) against eager `generate`.

    PYTHONPATH=packages/fmai-core/src:packages/fmai-torch/src \
        python benchmarks/decode_backend_gpu.py [--dtype float32] [--contexts 1024 8192]
    uv run python benchmarks/decode_backend_gpu.py --tiny      # CPU smoke test (dynamo, eager)

The model is the random ~1B Llama of `decode_gpu.py` (hidden 2048, 16 layers, 32 / 8 heads,
MLP 5632, bfloat16), with a word-level tokenizer of 32,000 made-up words built in memory
(one word one token; nothing is downloaded) and a ChatML template. For each context (a
system prompt of that many tokens) two backends over the same model hold a conversation
each: `HFBackend(model, compile=False)` (eager `generate`, `DynamicCache`) and
`HFBackend(model, compile=True)` (static cache, compiled one-token forward). Every turn asks
for exactly `--new-tokens` tokens (`min_new_tokens`), greedy, KV reuse on: turn 1 prefills
the whole prompt (and, compiled, compiles the decode step for that cache capacity); turns
2.. reuse the cache and prefill only the new user message. The two backends alternate within
each turn. Reported per turn kind: TTFT (the backend's own), decode tok/s (tokens after the
first over the time after the first), turn latency, and the greedy agreement of the two
backends' replies (identical prompts on turn 1; common prefix of the token ids).
Writes `decode_backend_gpu.json` into `$OUT` (or `--json`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch


def build_tokenizer(words: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>", "system", "user", "assistant"]
    vocab = {t: i for i, t in enumerate(special + [f"w{i}" for i in range(words - len(special))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        chat_template=(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
        clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return fast


def build_model(tiny: bool, vocab: int, device: Any, dtype: Any) -> Any:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = (
        {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}
        if tiny
        else {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16,
              "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0}
    )  # fmt: skip
    config = LlamaConfig(
        vocab_size=vocab, max_position_embeddings=16384, bos_token_id=1, eos_token_id=2, **shape
    )
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config = GenerationConfig(pad_token_id=3, eos_token_id=2)
    return model


def words(gen: torch.Generator, n: int, vocab: int) -> str:
    ids = torch.randint(7, vocab, (n,), generator=gen).tolist()
    return " ".join(f"w{i - 7}" for i in ids)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> int:
    from fmai_core import Message
    from fmai_torch import HFBackend

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small model on the CPU (a test)")
    parser.add_argument("--contexts", type=int, nargs="+", default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--turns", type=int, default=4, help="turns per context (1 + reused)")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    began = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = (
        getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    )
    contexts = args.contexts or ([1024, 8192] if cuda else [200])
    new = args.new_tokens or (128 if cuda else 8)
    vocab = 512 if args.tiny else 32000
    if cuda:
        torch.backends.cuda.enable_cudnn_sdp(False)
    tokenizer = build_tokenizer(vocab)
    model = build_model(args.tiny, vocab, device, dtype)
    backends = {
        "eager": HFBackend(model, tokenizer=tokenizer, compile=False),
        "compiled": HFBackend(model, tokenizer=tokenizer, compile=True if cuda else "eager"),
    }
    import transformers

    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        "new_tokens": new,
        "rows": [],
    }
    json_path = args.json or (
        os.path.join(os.environ["OUT"], "decode_backend_gpu.json")
        if os.environ.get("OUT")
        else None
    )
    gen = torch.Generator().manual_seed(1)
    params = {"max_new_tokens": new, "min_new_tokens": new, "temperature": 0}
    for context in contexts:
        system = words(gen, context - 12, vocab)
        users = [words(gen, 24, vocab) for _ in range(args.turns)]
        history = {name: [Message("system", system)] for name in backends}
        turns: dict[str, list[dict[str, Any]]] = {name: [] for name in backends}
        for t, user in enumerate(users):
            replies: dict[str, list[int]] = {}
            order = list(backends) if t % 2 == 0 else list(reversed(backends))
            for name in order:
                b = backends[name]
                msgs = [*history[name], Message("user", user)]
                if cuda:
                    torch.cuda.synchronize()
                g = b.generate(msgs, **params)
                history[name] = [*msgs, Message("assistant", g.text)]
                replies[name] = list(g.extra["token_ids"])
                decode_s = max(1e-9, (g.latency_ms - g.ttft_ms) / 1000)
                turns[name].append({
                    "turn": t + 1,
                    "prompt_tokens": g.usage.prompt_tokens,
                    "reused_tokens": g.usage.reused_tokens,
                    "ttft_ms": g.ttft_ms,
                    "latency_ms": g.latency_ms,
                    "decode_tok_s": (g.usage.completion_tokens - 1) / decode_s,
                    "loop": g.extra.get("decode", {}),
                })  # fmt: skip
            turns["compiled"][-1]["agreement"] = common_prefix(
                replies["compiled"], replies["eager"]
            )
            print(context, t + 1, {n: round(turns[n][-1]["decode_tok_s"], 1) for n in turns},
                  {n: round(turns[n][-1]["ttft_ms"], 1) for n in turns}, flush=True)  # fmt: skip
        row: dict[str, Any] = {"context": context, "turns": turns, "summary": {}}
        for name, ts in turns.items():
            later = ts[1:] or ts
            row["summary"][name] = {
                "first_turn_latency_ms": ts[0]["latency_ms"],
                "first_turn_ttft_ms": ts[0]["ttft_ms"],
                "ttft_ms": statistics.median(x["ttft_ms"] for x in later),
                "decode_tok_s": statistics.median(x["decode_tok_s"] for x in later),
                "latency_ms": statistics.median(x["latency_ms"] for x in later),
            }
        s = row["summary"]
        row["decode_ratio"] = s["compiled"]["decode_tok_s"] / s["eager"]["decode_tok_s"]
        row["turn1_agreement"] = turns["compiled"][0]["agreement"]
        out["rows"].append(row)
        if json_path:
            with open(json_path, "w", encoding="utf-8") as fh:
                json.dump(out, fh, indent=1)
    out["elapsed_s"] = time.perf_counter() - began
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
    print(f"{out['device']}, torch {out['torch']}, transformers {out['transformers']}, "
          f"{out['params'] / 1e9:.2f}B, {out['dtype']}, {new} new tokens")  # fmt: skip
    print("| context | loop | TTFT ms (reused) | decode tok/s | turn ms | first turn ms |"
          " compiled / eager | greedy agreement, turn 1 |")  # fmt: skip
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in out["rows"]:
        for name, s in row["summary"].items():
            extra = (
                f"{row['decode_ratio']:.2f}x | {row['turn1_agreement']}/{new}"
                if name == "compiled"
                else " | "
            )
            cells = [row["context"], name, f"{s['ttft_ms']:.1f}", f"{s['decode_tok_s']:.1f}"]
            cells += [f"{s['latency_ms']:.0f}", f"{s['first_turn_latency_ms']:.0f}", extra]
            print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
