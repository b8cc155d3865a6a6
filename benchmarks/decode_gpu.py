"""GPU decode speed of a random ~1B Llama: HF eager `generate` against the compiled static path.

    python benchmarks/decode_gpu.py                # CUDA: 1k and 8k context, bf16
    python benchmarks/decode_gpu.py --tiny         # CPU smoke test: small config, short context

The model is built from a config (no download): hidden 2048, 16 layers, 32 heads, 8 KV heads,
vocab 32000, bfloat16, random weights (seeded). For each context length a random prompt of
that many tokens is decoded greedily for `--new-tokens` tokens:

- `eager`: `generate` with its default `DynamicCache`, no compilation;
- `static+compile`: `generate(cache_implementation="static")`, which on CUDA compiles the
  decoding forward with `torch.compile(mode="reduce-overhead")` (transformers' documented
  automatic compilation; `generation_config.compile_config` holds the settings). One warm-up
  call per shape compiles and records the CUDA graphs; the timed calls follow.

Decode tok/s counts the tokens after the first over the time after the first (measured by a
streamer). The greedy outputs of the two paths are compared token by token: random weights
give flat logits, so bf16 rounding differences between eager and compiled kernels can flip
a near-tie; the table reports the common prefix. Prints a Markdown table and writes
`decode_gpu.json` into `$OUT` when it is set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

import torch


class FirstToken(BaseStreamer):
    """Records when `generate` hands over its first new token."""

    def __init__(self, sync: Any) -> None:
        self.sync, self.calls, self.first = sync, 0, None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            self.sync()
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def build(tiny: bool, device: torch.device, dtype: torch.dtype) -> Any:
    torch.manual_seed(0)
    if tiny:
        config = LlamaConfig(
            vocab_size=512,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
        )
    else:
        config = LlamaConfig(
            vocab_size=32000,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=16384,
            rope_theta=500000.0,
        )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=None)
    return model


def run(model: Any, ids: Any, new: int, static: bool, sync: Any) -> tuple[list[int], float, float]:
    """One greedy generate; returns (new ids, seconds to first token, decode tok/s)."""
    streamer = FirstToken(sync)
    kwargs: dict[str, Any] = {"cache_implementation": "static"} if static else {}
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            streamer=streamer,
            **kwargs,
        )
    sync()
    end = time.perf_counter()
    first = streamer.first or end
    return out[0, ids.shape[1] :].tolist(), first - start, (new - 1) / max(1e-9, end - first)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small config on the CPU (a test)")
    parser.add_argument("--contexts", type=int, nargs="+", default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    contexts = args.contexts or ([1024, 8192] if not args.tiny else [64])
    new = args.new_tokens or (128 if not args.tiny else 8)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = build(args.tiny, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "params": params,
        "dtype": str(dtype),
        "new_tokens": new,
        "rows": [],
    }
    gen = torch.Generator().manual_seed(1)
    for context in contexts:
        ids = torch.randint(1, model.config.vocab_size, (1, context), generator=gen).to(device)
        row: dict[str, Any] = {"context": context}
        outputs = {}
        for name, static in (("eager", False), ("static+compile", True)):
            started = time.perf_counter()
            run(model, ids, new, static, sync)  # warm-up: compiles / records graphs
            warm = time.perf_counter() - started
            timings = [run(model, ids, new, static, sync) for _ in range(args.repeats)]
            best = max(timings, key=lambda t: t[2])
            outputs[name] = best[0]
            row[name] = {"decode_tok_s": best[2], "ttft_s": best[1], "warmup_s": warm}
        row["speedup"] = row["static+compile"]["decode_tok_s"] / row["eager"]["decode_tok_s"]
        row["identical"] = outputs["eager"] == outputs["static+compile"]
        row["common_prefix"] = common_prefix(outputs["eager"], outputs["static+compile"])
        results["rows"].append(row)
    print(f"{results['device']}, torch {results['torch']}, {params / 1e9:.2f}B params, {dtype}")
    print()
    print(
        "| context | eager tok/s | static+compile tok/s | speedup | identical greedy |"
        " common prefix | compile warm-up s |"
    )
    print("| ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for row in results["rows"]:
        print(
            f"| {row['context']} | {row['eager']['decode_tok_s']:.1f} "
            f"| {row['static+compile']['decode_tok_s']:.1f} | {row['speedup']:.2f}x "
            f"| {'yes' if row['identical'] else 'no'} | {row['common_prefix']}/{new} "
            f"| {row['static+compile']['warmup_s']:.0f} |"
        )
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "decode_gpu.json"), "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
