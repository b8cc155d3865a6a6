"""Prefill matmuls of the int4 layers: torch's packed int4 kernel against dequantized weights.

    uv run python benchmarks/int4_prefill.py [--threads 1] [--rows 1 16 64 256 512]

For the embedded model's projection shapes (SmolLM2-135M: 576 -> 1536 and 1536 -> 576), a
random weight is packed as `Int4Linear` (groups of 32, as Q4_1), and `M` activation rows
(M = prompt tokens in one prefill) are multiplied by it three ways:

- `int4`: `Int4Linear.forward` (`aten._weight_int4pack_mm_for_cpu`), what fmai runs;
- `fp32 dequantized`: float32 activations times the dequantized float32 weight;
- `bf16 dequantized`: the same in bfloat16 (oneDNN; AMX / AVX-512 BF16 where the CPU has it).

Times are the best of `--repeats` calls, the three interleaved per repeat. A faster
dequantized path for long prompts would have to give the same numbers as the int4 kernel,
or greedy output with KV reuse on (short suffixes, int4 kernel) would differ from reuse off
(whole prompts, the other path); the last column gives the largest difference of each path
from `int4`, relative to the output's scale.
"""

from __future__ import annotations

import argparse
import time

import torch
from fmai_torch.quant import Int4Linear, int4_available


def best_ms(fns: dict[str, object], repeats: int) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for f in fns.values():
        f()  # type: ignore[operator]
    for _ in range(repeats):
        for name, f in fns.items():
            start = time.perf_counter()
            f()  # type: ignore[operator]
            best[name] = min(best[name], (time.perf_counter() - start) * 1000)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64, 256, 512])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if not int4_available():
        raise SystemExit("needs torch's CPU int4 kernels (torch >= 2.5)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    print()
    print(
        "| out x in | M | int4 ms | fp32 dequantized ms | bf16 dequantized ms | int4 / bf16 |"
        " max rel. diff fp32 / bf16 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for out_f, in_f in ((1536, 576), (576, 1536)):
        layer = Int4Linear.from_float(torch.randn(out_f, in_f) * 0.05)
        w32 = layer.dequantized()
        w16 = w32.to(torch.bfloat16)
        for m in args.rows:
            x = torch.randn(m, in_f)
            x16 = x.to(torch.bfloat16)
            with torch.inference_mode():
                fns = {
                    "int4": lambda x=x, layer=layer: layer(x),
                    "fp32": lambda x=x, w=w32: x @ w.t(),
                    "bf16": lambda x=x16, w=w16: x @ w.t(),
                }
                t = best_ms(fns, args.repeats)
                ref = layer(x)
                scale = ref.abs().max()
                d32 = float((x @ w32.t() - ref).abs().max() / scale)
                d16 = float(((x16 @ w16.t()).float() - ref).abs().max() / scale)
            print(
                f"| {out_f} x {in_f} | {m} | {t['int4']:.3f} | {t['fp32']:.3f} | {t['bf16']:.3f} "
                f"| {t['int4'] / t['bf16']:.1f}x | {d32:.1e} / {d16:.1e} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
