"""Step time of the lean CPU decode loop's variants on the embedded model, interleaved.

    uv run python benchmarks/lean_step.py [--weights int4] [--threads 1 2] [--burst 8]
        [--rounds 30] [--json PATH]

Three `HFBackend`s over three copies of the embedded model (so that no variant reads
another's weights): the plain lean step (`LeanDecoder(quantized=False)`), the quantized
step with its weights where they were loaded (`huge_pages=False`), and the default (the
quantized step, its weights in memory advised for huge pages). Each prefills the same
prompt into its own cache, then the three decode greedily in bursts of `--burst` steps,
taking turns (the order alternates by round), `--rounds` bursts each; every step's logits
are compared with `torch.equal` across the three (they must be identical), and the
figures are ms per token, best and median burst, and the speedups over the plain step.
Interleaving keeps the comparison fair on a machine whose load changes while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from _common import cpu_model
from fmai_core import Message

VARIANTS = {
    "plain": {"quantized": False, "huge_pages": False},
    "quantized": {"quantized": True, "huge_pages": False},
    "quantized + huge pages": {"quantized": True, "huge_pages": True},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="int4")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from transformers import DynamicCache

    import torch
    from fmai_torch import HFBackend
    from fmai_torch.lean import LeanDecoder
    from fmai_torch.weights import use_threads

    decoders: dict[str, tuple[Any, Any]] = {}
    for name, options in VARIANTS.items():
        backend = HFBackend("default", weights=args.weights, threads=1, lean=False)
        decoder = LeanDecoder(backend.model, backend.handle.cache_kw, **options)
        assert decoder.quantized == options["quantized"], f"{name}: no quantized step here"
        decoders[name] = (backend, decoder)
    first = next(iter(decoders.values()))[0]
    prompt = first.encode([Message("user", "Can you suggest a weekend plan for a rainy day?")])
    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "weights": args.weights,
        "burst": args.burst,
        "rounds": args.rounds,
        "load_before": os.getloadavg(),
        "threads": {},
    }
    names = list(decoders)
    for threads in args.threads:
        state: dict[str, dict[str, Any]] = {}
        with torch.inference_mode(), use_threads(threads):
            for name, (backend, decoder) in decoders.items():
                cache = DynamicCache()
                out = backend.model(
                    input_ids=torch.tensor([prompt]),
                    logits_to_keep=1,
                    **{backend.handle.cache_kw: cache},
                )
                decoder.begin(cache, args.burst * args.rounds + 1)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                state[name] = {"cache": cache, "token": token, "times": [], "logits": []}
            for r in range(args.rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    s, decoder = state[name], decoders[name][1]
                    start = time.perf_counter()
                    for _ in range(args.burst):
                        position = len(prompt) + len(s["logits"])
                        logits = decoder.step(s["token"], position, s["cache"])
                        s["token"] = logits.argmax(-1, keepdim=True)
                        s["logits"].append(logits)
                    s["times"].append((time.perf_counter() - start) / args.burst)
            for name in names:
                decoders[name][1].finish(state[name]["cache"])
        reference = torch.cat(state["plain"]["logits"])
        identical = all(torch.equal(reference, torch.cat(state[n]["logits"])) for n in names)
        assert identical, "the variants' logits differ"
        rows = {}
        base = state["plain"]["times"]
        for name in names:
            times = state[name]["times"]
            rows[name] = {
                "best_ms": min(times) * 1000,
                "median_ms": statistics.median(times) * 1000,
                "speedup_best": min(base) / min(times),
                "speedup_median": statistics.median(base) / statistics.median(times),
            }
        result["threads"][str(threads)] = {"rows": rows, "logits_identical": identical}
    result["load_after"] = os.getloadavg()
    print(
        f"{result['cpu']}; weights={args.weights}; {args.rounds} bursts of {args.burst} steps "
        f"per variant; load {result['load_before'][0]:.2f} -> {result['load_after'][0]:.2f}\n"
    )
    print("| threads | step | best ms/token | median | speedup (best / median) |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for threads, entry in result["threads"].items():
        for name, row in entry["rows"].items():
            print(
                f"| {threads} | {name} | {row['best_ms']:.2f} | {row['median_ms']:.2f} | "
                f"{row['speedup_best']:.2f}x / {row['speedup_median']:.2f}x |"
            )
    print("\nlogits identical across the variants at every step: yes")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
