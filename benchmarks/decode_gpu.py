"""GPU decode speed of a random ~1B Llama: HF eager `generate` against a compiled static path.

    python benchmarks/decode_gpu.py                # CUDA: 1k and 8k context, bf16
    python benchmarks/decode_gpu.py --tiny         # CPU smoke test: small config, short context

The model is built from a config (no download): hidden 2048, 16 layers, 32 heads, 8 KV heads,
MLP 5632, vocab 32000 (0.85B parameters), bfloat16, random weights (seeded). It needs only
torch and transformers (it runs on a GPU machine without fmai installed). For each context
length a random prompt of that many tokens is decoded greedily for `--new-tokens` tokens by:

- `generate`: transformers' `generate` with its default `DynamicCache`, eager;
- `bare`: a plain greedy loop of forwards over a `DynamicCache` (what `generate` adds per
  step is the difference between the two);
- `bare static`: the same loop over a `StaticCache`, eager (the cache alone);
- `static+compile`: the same loop over a `StaticCache` whose one-token forward is
  `torch.compile(mode="reduce-overhead", fullgraph=True)` (CUDA graphs); the prefill stays
  eager. One warm-up call per context compiles and records the graphs; the timed calls
  follow;
- `static+compile, matmul attention`: the same, with the decode steps' attention written as
  two matmuls and a softmax (`matmul_attention`) instead of SDPA, which for one query row
  over a long cache parallelises over the keys;
- `generate static` (with `--generate-static`): `generate(cache_implementation="static")`,
  which on CUDA compiles the decoding forward itself (transformers' automatic compilation).

Decode tok/s counts the steps after the first token over their time (the prefill and its
token are timed apart, as TTFT). Each path's greedy tokens are compared with `bare`'s: in
float32 (`--tiny`) they must be identical; in bfloat16 random weights give flat logits, so
rounding differences between eager and compiled kernels can flip a near-tie, and the table
reports the common prefix. cuDNN's attention is turned off (it builds a plan per new key
length, which lands on whichever call sees a length first). `--budget-s` skips what is
left once the run has taken that long (the rows done are kept). Prints a Markdown table and
writes `decode_gpu.json` into `$OUT` (or `--json`) after every row.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from transformers import DynamicCache, GenerationConfig, LlamaConfig, LlamaForCausalLM, StaticCache
from transformers.generation.streamers import BaseStreamer

import torch

PATHS = (
    "generate",
    "bare",
    "bare static",
    "static+compile",
    "static+compile, matmul attention",
    "generate static",
)


# The same function is `fmai_torch.compiled.matmul_attention`, which HFBackend's compiled decode
# path registers; it is kept here as a copy on purpose, because this benchmark runs on the
# device with only torch and transformers installed (no fmai packages). Change both together.
def matmul_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention as two matmuls and a float32 softmax, the query heads grouped per KV head.

    For one decoded token over a long static cache this is one wide matrix-vector product
    per KV head, which parallelises over the keys; a fused SDPA kernel given one query row
    works through the keys in few thread blocks.
    """
    b, heads, q, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else d**-0.5
    qg = query.reshape(b, kv_heads, groups * q, d)
    scores = torch.matmul(qg, key.transpose(-1, -2)).float() * scale
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=scores.dtype, device=mask.device).masked_fill(
                ~mask, float("-inf")
            )
        mask = mask.expand(b, heads, q, mask.shape[-1]).reshape(b, kv_heads, groups * q, -1)
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value).reshape(b, heads, q, d).transpose(1, 2).contiguous()
    return out, None


def register_matmul_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("matmul", matmul_attention)
    AttentionMaskInterface.register("matmul", sdpa_mask)


class FirstToken(BaseStreamer):
    """Records when `generate` hands over its first new token."""

    def __init__(self, sync: Callable[[], None]) -> None:
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
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=None)
    return model


def cache_keyword(model: Any) -> str:
    """`cache` in recent transformers, `past_key_values` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class Decoder:
    """Greedy decoding by one of the paths; `__call__` returns (ids, TTFT s, decode tok/s)."""

    def __init__(self, model: Any, path: str, sync: Callable[[], None], backend: str) -> None:
        self.model, self.path, self.sync = model, path, sync
        self.kw = cache_keyword(model)
        self.step = model.forward
        self.cache: Any = None
        self.cache_len = 0
        self.cuda = backend == "inductor"
        self.attention = "matmul" if path.endswith("matmul attention") else None
        if path.startswith("static+compile"):
            options: dict[str, Any] = {"fullgraph": True}
            if backend == "inductor":
                options["mode"] = "reduce-overhead"
            self.step = torch.compile(model.forward, backend=backend, **options)

    def __call__(self, ids: Any, new: int) -> tuple[list[int], float, float]:
        if self.path.startswith("generate"):
            return self.generate(ids, new)
        model, device, context = self.model, ids.device, ids.shape[1]
        if self.path == "bare":
            cache: Any = DynamicCache()
        else:  # one static cache, reset per call: the compiled graphs keep its addresses
            if self.cache is None or self.cache_len != context + new:
                self.cache = StaticCache(config=model.config, max_cache_len=context + new)
                self.cache_len = context + new
            cache = self.cache
        out_ids: list[Any] = []
        self.sync()
        start = time.perf_counter()
        with torch.inference_mode():
            if cache is self.cache:
                cache.reset()
            logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.kw: cache})
            token = logits.logits[:, -1].argmax(-1, keepdim=True)
            out_ids.append(token)
            self.sync()
            first = time.perf_counter()
            prefill_attention = model.config._attn_implementation
            if self.attention:  # the decode steps only; the prefill keeps SDPA
                model.config._attn_implementation = self.attention
            for i in range(new - 1):
                pos = torch.full((1, 1), context + i, dtype=torch.long, device=device)
                if self.path.startswith("static+compile") and self.cuda:
                    torch.compiler.cudagraph_mark_step_begin()
                out = self.step(
                    input_ids=token, position_ids=pos, use_cache=True, **{self.kw: cache}
                )
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                out_ids.append(token)
            model.config._attn_implementation = prefill_attention
            self.sync()
        end = time.perf_counter()
        ids_out = torch.cat(out_ids, dim=1)[0].tolist()
        return ids_out, first - start, (new - 1) / max(1e-9, end - first)

    def generate(self, ids: Any, new: int) -> tuple[list[int], float, float]:
        streamer = FirstToken(self.sync)
        kwargs: dict[str, Any] = {}
        if self.path == "generate static":
            kwargs["cache_implementation"] = "static"
        self.sync()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                streamer=streamer,
                **kwargs,
            )
        self.sync()
        end = time.perf_counter()
        first = streamer.first or end
        return out[0, ids.shape[1] :].tolist(), first - start, (new - 1) / max(1e-9, end - first)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def write(results: dict[str, Any], path: str | None) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)


def table(results: dict[str, Any]) -> str:
    new = results["new_tokens"]
    lines = [
        f"{results['device']}, torch {results['torch']}, transformers {results['transformers']}, "
        f"{results['params'] / 1e9:.2f}B params, {results['dtype']}, {new} new tokens",
        "",
        "| context | path | decode tok/s | ms/token | vs generate | TTFT ms | greedy = bare |"
        " warm-up s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in results["rows"]:
        base = row["paths"].get("generate", {}).get("decode_tok_s")
        for name, r in row["paths"].items():
            if "error" in r:
                lines.append(f"| {row['context']} | {name} | failed: {r['error'][:80]} | | | | | |")
                continue
            ratio = f"{r['decode_tok_s'] / base:.2f}x" if base else ""
            same = "yes" if r["common_prefix"] == new else f"first {r['common_prefix']}/{new}"
            lines.append(
                f"| {row['context']} | {name} | {r['decode_tok_s']:.1f} "
                f"| {1000 / r['decode_tok_s']:.2f} | {ratio} | {r['ttft_s'] * 1000:.1f} "
                f"| {same} | {r['warmup_s']:.1f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small config on the CPU (a test)")
    parser.add_argument("--contexts", type=int, nargs="+", default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--generate-static", action="store_true", help="also time that path")
    parser.add_argument("--paths", nargs="+", default=None, help=f"a subset of {PATHS}")
    parser.add_argument("--budget-s", type=float, default=float("inf"))
    parser.add_argument("--json", default=None, help="default: $OUT/decode_gpu.json")
    args = parser.parse_args()
    began = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    contexts = args.contexts or ([1024, 8192] if not args.tiny else [64])
    new = args.new_tokens or (128 if not args.tiny else 8)
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    # Inductor with CUDA graphs on the GPU; on the CPU smoke test dynamo traces the same
    # full graph but runs it eagerly (no C++ build), which checks the path, not its speed.
    backend = "inductor" if cuda else "eager"
    if cuda:  # cuDNN attention plans every new key length (tens of ms the first time)
        torch.backends.cuda.enable_cudnn_sdp(False)
    json_path = args.json or (
        os.path.join(os.environ["OUT"], "decode_gpu.json") if os.environ.get("OUT") else None
    )
    model = build(args.tiny, device, dtype)
    register_matmul_attention()
    import transformers

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).replace("torch.", ""),
        "new_tokens": new,
        "compile_backend": backend,
        "rows": [],
    }
    paths = args.paths or [p for p in PATHS if p != "generate static" or args.generate_static]
    gen = torch.Generator().manual_seed(1)
    for context in contexts:
        ids = torch.randint(1, model.config.vocab_size, (1, context), generator=gen).to(device)
        row: dict[str, Any] = {"context": context, "paths": {}}
        results["rows"].append(row)
        outputs: dict[str, list[int]] = {}
        for name in paths:
            if time.perf_counter() - began > args.budget_s:
                row["paths"][name] = {"error": "skipped: over --budget-s"}
                continue
            try:
                decoder = Decoder(model, name, sync, backend)
                started = time.perf_counter()
                decoder(ids, new)  # warm-up: compiles / records graphs / allocates
                warm = time.perf_counter() - started
                timings = [decoder(ids, new) for _ in range(args.repeats)]
            except Exception as exc:  # a path that fails is reported, the others still run
                row["paths"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
                continue
            best = max(timings, key=lambda t: t[2])
            outputs[name] = best[0]
            row["paths"][name] = {
                "decode_tok_s": best[2],
                "decode_tok_s_all": [t[2] for t in timings],
                "ttft_s": min(t[1] for t in timings),
                "warmup_s": warm,
            }
            del decoder
        for name, ids_out in outputs.items():
            row["paths"][name]["common_prefix"] = common_prefix(
                ids_out, outputs.get("bare", ids_out)
            )
        write(results, json_path)
    results["elapsed_s"] = time.perf_counter() - began
    write(results, json_path)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
