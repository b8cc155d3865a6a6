"""Decode speed of the embedded model per weights mode and thread count, against the memory
bandwidth measured in the same run, next to `llama-server` on the same GGUF when available.

    uv run python benchmarks/decode.py [--turns 6] [--new-tokens 48] [--threads 1 2]
        [--modes fp32 bf16 int8 int4] [--server-bin PATH] [--json PATH]
    uv run python benchmarks/decode.py --compare --server-bin PATH [--turns 14] [--rounds 3]
    uv run python benchmarks/decode.py --fast --server-bin PATH   # 3 turns x 32 tokens

For each mode and thread count: a greedy multi-turn chat through `HFBackend` (KV reuse on),
reporting decode tok/s (tokens after the first over the time after the first), TTFT, turn
latency and the bytes of weights read per token; each speed is also given as a fraction of
the ceiling `bandwidth / bytes per token`. Also: what `generate` adds per step over a bare
forward loop on the same cache, and the quality of each mode against fp32 on the fp32
replies (greedy agreement of the next-token argmax, mean NLL difference), teacher-forced.

`--compare`: only fmai in `--compare-mode` (int4) against llama-server, at each thread
count, one whole chat each per round, the two alternating which goes first, the ratios
fmai / llama-server taken within each round; also which weights and threads `auto` picks.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import time
import urllib.request
from typing import Any

from _common import cpu_model
from fmai_core import Message

USER_TURNS = [
    "Hi! I'm Ada, I live in Porto and I play the cello.",
    "Can you suggest a weekend plan for a rainy day in my city?",
    "What instrument did I say I play? Suggest a piece for it.",
    "Give me three tips to practise more regularly.",
    "I also like baking. What dessert goes well with coffee?",
    "Summarise what you know about me in two sentences.",
    "Which of your earlier tips is the easiest to start with?",
    "Thanks! Write a short haiku about rain and music.",
    "What city did I say I live in? Name one museum there.",
    "Suggest a simple recipe for the dessert you mentioned.",
    "How long should I practise each day as a beginner?",
    "Give me a packing list for a day trip by train.",
    "What was the first thing I told you about myself?",
    "Say goodbye in one friendly sentence.",
]


def bandwidth(threads: int, mib: int = 256) -> float:
    """GB/s of a large tensor copy (read + write counted) at `threads` threads."""
    import torch

    with_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(with_threads)
    return 2 * src.numel() * 4 / best / 1e9


def bytes_per_token(model: Any) -> int:
    """Bytes of weights one decode step reads: all but the embedding (one row), plus the head."""
    seen: set[int] = set()
    total = 0
    embed = model.get_input_embeddings().weight
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen or tensor is embed or tensor.device.type == "meta":
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    head = getattr(model.lm_head, "weight", None)
    if head is not None and head is embed:
        total += embed.numel() * embed.element_size()
    return total


def chat(backend: Any, turns: int, new_tokens: int) -> tuple[list[dict[str, float]], list[Any]]:
    messages = [Message("system", "You are a helpful, concise assistant.")]
    rows, prompts = [], []
    for text in USER_TURNS[:turns]:
        messages.append(Message("user", text))
        g = backend.generate(messages, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        n = g.usage.completion_tokens
        decode_s = max(1e-9, (g.latency_ms - g.ttft_ms) / 1000)
        rows.append(
            {
                "ttft_ms": g.ttft_ms,
                "latency_ms": g.latency_ms,
                "tokens": n,
                "decode_tok_s": (n - 1) / decode_s,
                "prefill": g.usage.prefill_tokens,
            }
        )
        prompts.append((list(messages), g.extra["token_ids"]))
        messages.append(Message("assistant", g.text))
    return rows, prompts


def generate_overhead(backend: Any, new_tokens: int) -> dict[str, float]:
    """ms per step of `generate`, of a bare greedy forward loop over a DynamicCache, and of
    the lean loop's steps (`fmai_torch.lean`, when the backend has one) on the same prompt."""
    from transformers import DynamicCache

    import torch
    from fmai_torch.weights import use_threads

    model, kw = backend.model, backend.handle.cache_kw
    ids = torch.tensor([backend.encode([Message("user", USER_TURNS[1])])])
    lean = getattr(backend, "_decoder", None)
    lean = lean if getattr(backend, "lean", False) else None
    with torch.inference_mode(), use_threads(backend.threads):
        best_gen = best_bare = best_lean = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=backend.pad_id,
            )
            best_gen = min(best_gen, time.perf_counter() - start)
            start = time.perf_counter()
            cache = DynamicCache()
            out = model(input_ids=ids, **{kw: cache}, logits_to_keep=1)
            for _ in range(new_tokens - 1):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                out = model(input_ids=nxt, **{kw: cache}, logits_to_keep=1)
            best_bare = min(best_bare, time.perf_counter() - start)
            if lean is not None:
                start = time.perf_counter()
                lean.run(
                    ids[0].tolist(),
                    DynamicCache(),
                    ids.shape[1],
                    max_new=new_tokens,
                    eos=(),
                    pick=lambda logits, step: logits.argmax(-1, keepdim=True),
                    emit=lambda t: None,
                    stop=lambda tokens: False,
                )
                best_lean = min(best_lean, time.perf_counter() - start)
    result = {
        "generate_ms_per_token": best_gen * 1000 / new_tokens,
        "bare_ms_per_token": best_bare * 1000 / new_tokens,
    }
    if lean is not None:
        result["lean_ms_per_token"] = best_lean * 1000 / new_tokens
    return result


def teacher_forced(backend: Any, prompts: list[Any]) -> list[Any]:
    """Per turn: (argmax ids, NLL per token) of the reference reply under `backend`'s model."""
    import torch
    from fmai_torch.weights import use_threads

    results = []
    with torch.inference_mode(), use_threads(backend.threads):
        for messages, reply in prompts:
            prompt = backend.encode(messages)
            ids = torch.tensor([prompt + reply])
            logits = backend.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            target = torch.tensor(reply)
            nll = torch.nn.functional.cross_entropy(logits, target, reduction="none")
            results.append((logits.argmax(-1), nll))
    return results


def find_server(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    found = shutil.which("llama-server") or sorted(glob.glob("/tmp/*llama*/build/bin/llama-server"))
    return found if isinstance(found, str) else (found[0] if found else None)


def run_server(binary: str, threads: int, args: argparse.Namespace, backend: Any) -> dict[str, Any]:
    """The same chat through llama-server's /completion on the same GGUF and prompt text."""
    from fmai_torch.default_model import find_default_gguf

    port = 18000 + threads
    cmd = [binary, "-m", str(find_default_gguf()), "-t", str(threads), "-tb", str(threads)]
    cmd += ["--port", str(port), "-c", "4096", "-np", "1", "--no-warmup"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"{root}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        messages = [Message("system", "You are a helpful, concise assistant.")]
        rows = []
        for text in USER_TURNS[: args.turns]:
            messages.append(Message("user", text))
            body = {
                "prompt": backend.render(messages),
                "n_predict": args.new_tokens,
                "ignore_eos": True,
                "temperature": 0,
                "cache_prompt": True,
            }
            request = urllib.request.Request(
                f"{root}/completion",
                json.dumps(body).encode(),
                {"Content-Type": "application/json"},
            )
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=120) as r:
                reply = json.loads(r.read())
            latency = (time.perf_counter() - start) * 1000
            t = reply.get("timings", {})
            rows.append(
                {
                    "ttft_ms": t.get("prompt_ms", 0.0)
                    + t.get("predicted_ms", 0.0) / max(1, t.get("predicted_n", 1)),
                    "latency_ms": latency,
                    "tokens": t.get("predicted_n", 0),
                    "decode_tok_s": t.get("predicted_per_second", 0.0),
                    "prefill": t.get("prompt_n", 0),
                }
            )
            messages.append(Message("assistant", reply.get("content", "")))
        return summarise(rows, os.path.getsize(find_default_gguf()))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def compare(args: argparse.Namespace, server: str) -> dict[str, Any]:
    """fmai (`--compare-mode`) against llama-server, same GGUF, same threads, interleaved.

    Per round and thread count: one whole `--turns`-turn chat through each, in alternating
    order (fmai first in even rounds); the backends and servers stay loaded between rounds.
    Returns per-round figures and the ratios fmai / llama-server within each round.
    """
    from fmai_torch import HFBackend

    backends = {t: HFBackend("default", weights=args.compare_mode, threads=t) for t in args.threads}
    auto = HFBackend("default")
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        row: dict[str, Any] = {}
        for threads in args.threads:
            order = ["fmai", "llama-server"] if r % 2 == 0 else ["llama-server", "fmai"]
            for who in order:
                if who == "fmai":
                    rows, _ = chat(backends[threads], args.turns, args.new_tokens)
                    run = summarise(rows, bytes_per_token(backends[threads].model))
                else:  # the server's start is not counted: chat_s sums the turns
                    run = run_server(server, threads, args, backends[threads])
                run.pop("turns")
                row[f"{who}/{threads}"] = run
            f, ls = row[f"fmai/{threads}"], row[f"llama-server/{threads}"]
            row[f"ratio/{threads}"] = {
                "decode": f["decode_tok_s"] / ls["decode_tok_s"],
                "ttft": f["ttft_ms"] / ls["ttft_ms"],
                "chat": f["chat_s"] / ls["chat_s"],
            }
        rounds.append(row)
    return {
        "mode": args.compare_mode,
        "auto_picks": {"weights": auto.weights, "threads": auto.threads},
        "rounds": rounds,
    }


def print_compare(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"fmai weights={result['mode']} vs llama-server, {args.turns} turns x "
        f"{args.new_tokens} tokens, {args.rounds} interleaved rounds; auto picks "
        f"{result['auto_picks']}"
    )
    print()
    print(
        "| round | threads | fmai decode tok/s | server decode tok/s | ratio | fmai TTFT ms |"
        " server TTFT ms | ratio | fmai chat s | server chat s | ratio |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, row in enumerate(result["rounds"], 1):
        for threads in args.threads:
            f, ls = row[f"fmai/{threads}"], row[f"llama-server/{threads}"]
            q = row[f"ratio/{threads}"]
            print(
                f"| {i} | {threads} | {f['decode_tok_s']:.1f} | {ls['decode_tok_s']:.1f} "
                f"| {q['decode']:.2f} | {f['ttft_ms']:.0f} | {ls['ttft_ms']:.0f} "
                f"| {q['ttft']:.2f} | {f['chat_s']:.1f} | {ls['chat_s']:.1f} | {q['chat']:.2f} |"
            )


def summarise(rows: list[dict[str, float]], weight_bytes: int) -> dict[str, Any]:
    later = rows[1:] or rows
    return {
        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in later),
        "ttft_ms": statistics.median(r["ttft_ms"] for r in later),
        "turn_ms": statistics.median(r["latency_ms"] for r in later),
        "chat_s": sum(r["latency_ms"] for r in rows) / 1000,
        "bytes_per_token": weight_bytes,
        "turns": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["fp32", "bf16", "int8", "int4"],
        help="weights modes; MODE:generate decodes with generate instead of the lean loop",
    )
    parser.add_argument("--server-bin", default=None, help="llama-server to compare with")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="only fmai (--compare-mode) against llama-server, interleaved (--rounds)",
    )
    parser.add_argument("--compare-mode", default="int4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--fast",
        action="store_true",
        help="3 turns x 32 tokens, no generate-vs-bare timing (a quiet full run in minutes)",
    )
    args = parser.parse_args()
    if args.fast:
        args.turns, args.new_tokens = min(args.turns, 3), min(args.new_tokens, 32)
    if args.compare:
        found = find_server(args.server_bin)
        if not found:
            parser.error("--compare needs llama-server (--server-bin PATH)")
        result = compare(args, found)
        print_compare(result, args)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(result, fh, indent=1, default=str)
        return 0

    from fmai_torch import HFBackend

    bw = {t: bandwidth(t) for t in args.threads}
    results: dict[str, Any] = {"cpu": cpu_model(), "bandwidth_gb_s": bw, "runs": {}}
    reference: list[Any] | None = None
    prompts: list[Any] = []
    for mode in args.modes:
        for threads in args.threads:
            start = time.perf_counter()
            weights, _, loop = mode.partition(":")  # "int4:generate": lean loop off
            backend = HFBackend(
                "default", weights=weights, threads=threads, lean=loop != "generate"
            )
            load_s = time.perf_counter() - start
            rows, turn_prompts = chat(backend, args.turns, args.new_tokens)
            run = summarise(rows, bytes_per_token(backend.model))
            run["load_s"] = load_s
            if threads == args.threads[0]:
                if not args.fast:
                    run.update(generate_overhead(backend, args.new_tokens))
                if mode == "fp32" or not prompts:
                    prompts = turn_prompts
                forced = teacher_forced(backend, prompts)
                if mode == "fp32" or reference is None:
                    reference = forced
                agree = [float((a == r[0]).float().mean()) for (a, _), r in zip(forced, reference)]
                delta = [float((n - r[1]).mean()) for (_, n), r in zip(forced, reference)]
                run["greedy_agreement"] = statistics.mean(agree)
                run["nll_delta"] = statistics.mean(delta)
            results["runs"][f"{mode}/{threads}"] = run
            del backend
    server = find_server(args.server_bin)
    if server:
        from fmai_torch import HFBackend as _HF

        renderer = _HF("default", weights="fp32", threads=1)
        for threads in args.threads:
            results["runs"][f"llama-server/{threads}"] = run_server(server, threads, args, renderer)
    auto = HFBackend("default")
    results["auto_picks"] = {"weights": auto.weights, "threads": auto.threads}
    del auto
    print(
        f"CPU: {results['cpu']}; copy bandwidth "
        + ", ".join(f"{t} thread(s) {v:.1f} GB/s" for t, v in bw.items())
        + f"; auto picks {results['auto_picks']}; {args.turns} turns x {args.new_tokens} tokens"
    )
    print()
    print(
        "| weights / threads | decode tok/s | of ceiling | TTFT ms | turn ms | MB/token |"
        " agreement | NLL delta | generate vs bare (vs lean) ms/token |"
        " vs llama-server (same threads): decode / TTFT / turn |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for key, run in results["runs"].items():
        threads = int(key.rsplit("/", 1)[1])
        ceiling = bw[threads] * 1e9 / run["bytes_per_token"]
        run["fraction_of_ceiling"] = run["decode_tok_s"] / ceiling
        overhead = (
            f"{run['generate_ms_per_token']:.1f} vs {run['bare_ms_per_token']:.1f}"
            if "generate_ms_per_token" in run
            else ""
        )
        if "lean_ms_per_token" in run:
            overhead += f" vs {run['lean_ms_per_token']:.1f}"
        quality = (
            f"{run['greedy_agreement']:.3f} | {run['nll_delta']:+.4f}"
            if "greedy_agreement" in run
            else " | "
        )
        ref = results["runs"].get(f"llama-server/{threads}")
        vs = ""
        if ref and not key.startswith("llama-server"):
            run["vs_server"] = {
                "decode": run["decode_tok_s"] / ref["decode_tok_s"],
                "ttft": run["ttft_ms"] / ref["ttft_ms"],
                "turn": run["turn_ms"] / ref["turn_ms"],
            }
            vs = " / ".join(f"{v:.2f}x" for v in run["vs_server"].values())
        print(
            f"| {key} | {run['decode_tok_s']:.1f} | {run['fraction_of_ceiling']:.0%} "
            f"| {run['ttft_ms']:.0f} | {run['turn_ms']:.0f} | {run['bytes_per_token'] / 1e6:.0f} "
            f"| {quality} | {overhead} | {vs} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
