"""Cross-turn KV reuse on a GPU: a randomly initialised ~1B Llama-shaped model, up to 8k tokens.

The same measurement as `kv_cache.py` (reuse on vs recompute, interleaved turn by turn, on
the identical prompt), on a CUDA device with a model large enough for prefill to matter:
Llama-shaped, 18 layers, hidden size 2048, 32 query / 8 key-value heads, MLP 5632, the
SmolLM2 tokenizer's 49,152-token vocabulary (about 1.0B parameters), bfloat16, random
weights (no checkpoint is downloaded). Each user message is about 380 tokens of text, each
reply exactly `--max-new-tokens` tokens, so over 20 turns the prompt grows to about 8k
tokens.

Run it with `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`: without it, whichever call
first reaches a new context length pays for fresh `cudaMalloc`s as the cache grows token by
token (seconds per turn on an H200), which swamps what is being measured. For the same
reason the script turns PyTorch's cuDNN attention off (`--cudnn-sdp` keeps it): in bfloat16
it builds a plan for every new key length, roughly 40 ms per decoded token the first time a
length is seen, which lands on whichever of the two runs reaches that length first.

Run: `python benchmarks/kv_cache_gpu.py --tokenizer DIR` where DIR holds a Hugging Face
tokenizer with a chat template (the converted default model's folder in the fmai cache
works: `fmai model` prints it). `--json` and `--plot` write the raw figures and the PNG.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from fmai_core import FiniteMemoryLLM

WORDS = (
    "the river city market train station morning evening ticket hotel museum garden temple "
    "bridge street coffee dinner lunch breakfast friend sister brother mother father north "
    "south east west mountain lake forest island harbour village road bicycle bus taxi "
    "walk visit plan book change cancel price budget cheap expensive quiet busy early late "
    "rain snow sun wind cold warm summer winter spring autumn history art music food "
    "noodles rice fish tea bread cheese wine beer water map guide question answer"
).split()


def user_message(rng: random.Random, words: int) -> str:
    """About `words` words of plain sentences."""
    sentences = []
    count = 0
    while count < words:
        n = rng.randint(8, 16)
        sentence = " ".join(rng.choice(WORDS) for _ in range(n))
        sentences.append(sentence.capitalize() + ".")
        count += n
    return " ".join(sentences) + " What do you suggest?"


def build_model(vocab: int, layers: int, hidden: int, device: str, dtype_name: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    import torch

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=16384,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--user-words", type=int, default=300)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16 or float32")
    parser.add_argument(
        "--cudnn-sdp", action="store_true", help="allow cuDNN attention (off by default)"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    import torch
    from fmai_torch import HFBackend

    if args.device == "cuda" and not args.cudnn_sdp:
        torch.backends.cuda.enable_cudnn_sdp(False)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = build_model(len(tokenizer), args.layers, args.hidden, args.device, args.dtype)
    params = sum(p.numel() for p in model.parameters())
    on = HFBackend(model, tokenizer=tokenizer)
    off = HFBackend(model, tokenizer=tokenizer, kv_reuse=False)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"model: {params / 1e9:.2f}B parameters on {device_name}", flush=True)
    n = args.max_new_tokens
    gen = {"max_new_tokens": n, "min_new_tokens": n, "temperature": 0.0}
    rng = random.Random(0)
    off.generate(FiniteMemoryLLM(off, policy="sliding").context("warm up"), **gen)  # kernels
    llm = FiniteMemoryLLM(on, policy="sliding", max_tokens=16384, max_new_tokens=n)
    rows: list[dict[str, Any]] = []
    for turn in range(args.turns):
        text = user_message(rng, args.user_words)
        messages = llm.context(text)
        if turn % 2 == 0:
            ref = off.generate(messages, **gen)
            result = llm.chat(text, min_new_tokens=n)
        else:
            result = llm.chat(text, min_new_tokens=n)
            ref = off.generate(messages, **gen)
        s = result.stats
        rows.append(
            {
                "turn": turn + 1,
                "prompt_tokens": s.prompt_tokens,
                "reused_tokens": s.reused_tokens,
                "prefill_tokens": s.prefill_tokens,
                "ttft_ms_reuse": s.ttft_ms,
                "latency_ms_reuse": s.latency_ms,
                "ttft_ms_recompute": ref.ttft_ms,
                "latency_ms_recompute": ref.latency_ms,
                "same_reply": ref.text == result.response,
            }
        )
        print(
            f"turn {turn + 1:2d}: prompt {s.prompt_tokens:5d} reused {s.reused_tokens:5d}; "
            f"TTFT {ref.ttft_ms:6.1f} -> {s.ttft_ms:6.1f} ms; "
            f"latency {ref.latency_ms:7.1f} -> {s.latency_ms:7.1f} ms; "
            f"same={rows[-1]['same_reply']}",
            flush=True,
        )
    later = [r for r in rows if r["turn"] >= 10] or rows
    summary = {
        "model_parameters": params,
        "device": device_name,
        "dtype": str(next(model.parameters()).dtype),
        "torch": torch.__version__,
        "cudnn_sdp": bool(args.cudnn_sdp),
        "reuse_share_after_turn_1": sum(r["reused_tokens"] for r in rows[1:])
        / max(1, sum(r["prompt_tokens"] for r in rows[1:])),
        "ttft_speedup_median_from_turn_10": statistics.median(
            r["ttft_ms_recompute"] / r["ttft_ms_reuse"] for r in later
        ),
        "latency_speedup_median_from_turn_10": statistics.median(
            r["latency_ms_recompute"] / r["latency_ms_reuse"] for r in later
        ),
        "identical_replies": sum(r["same_reply"] for r in rows),
        "max_prompt_tokens": max(r["prompt_tokens"] for r in rows),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        x = [r["prompt_tokens"] for r in rows]
        for ax, key, label in (
            (axes[0], "latency_ms", "turn latency"),
            (axes[1], "ttft_ms", "TTFT"),
        ):
            ax.plot(
                x,
                [r[f"{key}_recompute"] for r in rows],
                "o-",
                color="tab:red",
                ms=3,
                label="recompute",
            )
            ax.plot(
                x,
                [r[f"{key}_reuse"] for r in rows],
                "o-",
                color="tab:green",
                ms=3,
                label="KV reuse",
            )
            ax.set_xlabel(f"prompt tokens (turns 1..{len(rows)})")
            ax.set_ylabel("ms")
            ax.set_title(label)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"random {params / 1e9:.1f}B Llama, {summary['dtype']}, {device_name}")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
