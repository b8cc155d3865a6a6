"""How much of each prompt a provider's prefix cache can serve, per memory policy.

A 50-turn conversation runs through `FiniteMemoryLLM` with an `OpenAIBackend` pointed at the
loopback fake provider (`tests/core/fakeserver.py`), once per policy, under a budget tight
enough to force evictions. The fake provider emulates prefix caching as OpenAI and Anthropic
do it: the request's serialized messages are cut into blocks of 64 tokens, and the cached
prompt tokens are the longest run of whole leading blocks that some earlier request also
began with. The figure is the share of all prompt tokens the provider reports as cached
(`usage.prompt_tokens_details.cached_tokens`, which the backend reports as `reused_tokens`).

Next to the policies stand two plain windows that call the same backend directly:

- `last-N messages`: the system prompt plus the newest N messages, for a fixed N;
- `newest that fit`: the system prompt plus the newest messages that fit the same budget,
  re-chosen every turn (what a naive token-window does).

Both slide by one or two messages per turn, so their prefix changes every turn. The backend
counts with the fake provider's own tokenizer (the case where an exact tokenizer is at hand).

Run: `python benchmarks/prompt_cache.py` (needs `fmai-core[openai]`). `--turns`, `--budget`,
`--block`, `--min-cached` change the set-up; `--json` prints the raw figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "core"))

from fakeserver import FakeProvider, tokens

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backends import OpenAIBackend

POLICIES = ["sliding", "importance", "semantic", "rolling_summary", "hybrid"]
SYSTEM = (
    "You are a careful assistant for a small travel agency. Keep answers short, repeat the "
    "customer's numbers exactly, and say when you are unsure. "
) * 3
NAMES = ["Ada", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivo", "Jun"]
CITIES = ["Lisbon", "Osaka", "Quito", "Tallinn", "Accra", "Hobart", "Bergen", "Cusco"]
FILLER = (
    "I was also wondering about the luggage rules, the seat choice, the meals on board and "
    "whether the hotel has a quiet room facing the courtyard rather than the street"
).split()


def conversation(turns: int, seed: int = 0) -> list[str]:
    """Deterministic user messages, each with a fact and some filler (20 to 60 words)."""
    rng = random.Random(seed)
    out = []
    for i in range(turns):
        fact = (
            f"Turn {i}: my friend {rng.choice(NAMES)} flies to {rng.choice(CITIES)} on day "
            f"{rng.randint(1, 28)} with booking code {rng.randint(10000, 99999)}."
        )
        words = rng.randint(8, 40)
        out.append(fact + " " + " ".join(rng.choice(FILLER) for _ in range(words)) + ".")
    return out


def _share(rows: list[tuple[int, int]]) -> dict[str, Any]:
    prompt = sum(p for p, _ in rows)
    cached = sum(c for _, c in rows)
    return {
        "turns": len(rows),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "cached_share": cached / prompt if prompt else 0.0,
        "mean_prompt": prompt / len(rows) if rows else 0.0,
    }


def count(text: str) -> int:
    """The fake provider's own tokenizer: the 'exact tokenizer available' case."""
    return len(tokens(text))


def _backend(server: FakeProvider) -> OpenAIBackend:
    return OpenAIBackend(
        "fake-model", base_url=server.openai_url, api_key="sk-test-key", tokenizer=count
    )


def run_policy(
    policy: str, texts: list[str], args: argparse.Namespace, recall_fraction: float = 0.25
) -> dict[str, Any]:
    with FakeProvider(block_tokens=args.block, min_cached_tokens=args.min_cached) as server:
        backend = _backend(server)
        llm = FiniteMemoryLLM(
            backend,
            policy=policy,
            max_tokens=args.budget,
            max_new_tokens=args.new_tokens,
            system_prompt=SYSTEM,
            max_policy_ms=None,
            recall_fraction=recall_fraction,
        )
        rows = []
        evictions = recalled = 0
        for text in texts:
            stats = llm.chat(text).stats
            rows.append((stats.prompt_tokens, stats.reused_tokens))
            evictions += int(stats.evicted)
            recalled += stats.recalled_tokens
        backend.close()
    return {**_share(rows), "evictions": evictions, "mean_recalled": recalled / len(texts)}


def run_window(texts: list[str], args: argparse.Namespace, n: int | None) -> dict[str, Any]:
    """A plain window: the newest `n` messages, or (n=None) the newest that fit the budget."""
    with FakeProvider(block_tokens=args.block, min_cached_tokens=args.min_cached) as server:
        backend = _backend(server)
        history: list[Message] = []
        rows = []
        limit = args.budget - args.new_tokens
        for text in texts:
            user = Message("user", text)
            if n is not None:
                kept = history[-n:] if n else []
            else:
                kept = list(history)
                while (
                    kept and backend.count_tokens([Message("system", SYSTEM), *kept, user]) > limit
                ):
                    kept.pop(0)
            gen = backend.generate(
                [Message("system", SYSTEM), *kept, user], max_new_tokens=args.new_tokens
            )
            rows.append((gen.usage.prompt_tokens, gen.usage.reused_tokens))
            history += [user, Message("assistant", gen.text)]
        backend.close()
    return _share(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--budget", type=int, default=1024, help="max_tokens")
    parser.add_argument("--new-tokens", type=int, default=48, help="max_new_tokens")
    parser.add_argument("--block", type=int, default=64, help="cache block size in tokens")
    parser.add_argument(
        "--min-cached", type=int, default=0, help="shortest prefix the provider caches"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    texts = conversation(args.turns)
    results: dict[str, dict[str, Any]] = {}
    for policy in POLICIES:
        results[policy] = run_policy(policy, texts, args)
    results["hybrid, recall_fraction=0"] = run_policy("hybrid", texts, args, 0.0)
    for n in (6, 10):
        results[f"last {n} messages"] = run_window(texts, args, n)
    results["newest that fit"] = run_window(texts, args, None)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"{args.turns} turns, max_tokens={args.budget}, max_new_tokens={args.new_tokens}, "
        f"cache blocks of {args.block} tokens, minimum cached prefix {args.min_cached}\n"
    )
    print(
        "| prompt layout | cached share of prompt tokens | mean prompt tokens "
        "| mean recalled tokens | evictions |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        ev = r.get("evictions", "–")
        rec = f"{r['mean_recalled']:.0f}" if "mean_recalled" in r else "–"
        print(f"| {name} | {r['cached_share']:.1%} | {r['mean_prompt']:.0f} | {rec} | {ev} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
