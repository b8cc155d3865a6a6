"""fmai's hosted budgets against a real llama.cpp `llama-server` serving the embedded model.

A scripted 20-turn chat runs through `FiniteMemoryLLM` with an `OpenAIBackend` pointed at a
`llama-server` that this program starts (on loopback, one slot, a context of 4096 so that a
prompt over fmai's budget is still served and shows up), serving the embedded SmolLM2-135M
GGUF. Each budget (`--budgets`, default 384 and 1024) runs once per counting mode
(`--count`, default both `auto`, which finds the server's `/apply-template` + `/tokenize`,
and `estimate`, fmai's own estimate fitted to usage), each on a fresh server.

Per run it reports, by the server's own count (its `usage`):

- `ratio`: fmai's count of each prompt (made before sending) / the server's `prompt_tokens`,
  on turn 0 and, after it, the median, the worst (farthest from 1) and the lowest (an
  under-count is how a prompt goes over the budget); `--no-per-text` counts with the affine
  fit alone (`count_per_text=False`, as `fmai serve` does);
- `over`: turns whose prompt + `max_new_tokens` exceeded the budget;
- `cache`: the share of prompt tokens the server's cache served
  (`prompt_tokens_details.cached_tokens`);
- `used`: the most of the budget a prompt + `max_new_tokens` took before the first eviction
  (`-` when nothing was evicted), the turn of the first eviction, evictions, and evictions
  of a single segment right after another eviction;
- `needed`: what the first evicting turn's prompt would have taken with nothing evicted (the
  whole conversation so far and the new message, counted by the server's `/apply-template`
  and `/tokenize`) + `max_new_tokens`, as a share of the budget: over 100% means that the
  eviction was forced, under it that fmai evicted early;
- `mean used` and `used on eviction turns`: prompt + `max_new_tokens` as a share of the
  budget, averaged over all turns and over the turns that evicted (how full a prompt is
  right after an eviction to the low-water mark).

The server binary: `--server-bin PATH`, else `llama-server` on `PATH`; without one the
program says so and exits 0 (docs/hosted.md says how to build it from the llama-cpp-python
sdist). The model: `--model PATH`, else the embedded GGUF (`fmai_torch.default_model`).

Run: `python benchmarks/hosted_budget.py [--server-bin PATH] [--json]` (needs
`fmai-core[openai]`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import free_port, wait_until_up
from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backend import Generation
from fmai_core.backends import OpenAIBackend
from fmai_core.backends.server_count import ServerCounter

USER = [
    "Hi! I'm planning a trip to Lisbon with my sister Ada in May.",
    "We land on the 14th at 9:40 and leave on the 21st. What should we see first?",
    "Ada loves tiles and old trams. Can you list three things for her?",
    "Here is our rough plan:\n- day 1: Alfama\n- day 2: Belem\n- day 3: Sintra\nIs it too much?",
    "What is a pastel de nata, in one or two sentences?",
    "My budget is 120 euros a day for both of us. Is that enough for food and transport?",
    "Write a short Python function that converts euros to dollars at a rate of 1.08.",
    "Thanks. Which neighbourhood is quiet at night but close to the centre?",
    "Ada doesn't eat fish. Suggest two dishes she could try.",
    "How do we get from the airport to Baixa by metro?",
    "Remind me: on what day do we land, and at what time?",
    "Is tipping expected in restaurants there?",
    "We want one day trip outside the city. Sintra or Cascais, and why?",
    "Give me a packing list for May, as a short bulleted list.",
    "What does 'obrigado' mean, and when do I say 'obrigada' instead?",
    "Our hotel is near Rossio. How far is the Santa Justa lift?",
    "Can you summarise our plan so far in three lines?",
    "What is my sister's name, and what does she love?",
    "Any advice for the tram 28 crowds?",
    "Last question: what should we do on our final evening?",
]


class LlamaServer:
    """A `llama-server` child process on loopback, up until `close()`."""

    def __init__(self, binary: str, model: Path, ctx: int, threads: int) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        cmd = [
            binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            "-c", str(ctx), "-np", "1", "-t", str(threads),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until_up(self.proc, f"{self.root}/health", 120, 0.3, Path(self.log.name))

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


class Recording(OpenAIBackend):
    """An OpenAIBackend that notes its own count of each prompt right before sending it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counted: list[int] = []
        self.usage: list[Any] = []

    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        self.counted.append(self.count_tokens(messages))
        gen = super().generate(messages, **params)
        self.usage.append(gen.usage)
        return gen


def run_one(
    server: LlamaServer,
    budget: int,
    max_new: int,
    count: str,
    turns: int,
    policy: str,
    timeout: float = 600.0,
    per_text: bool = True,
) -> dict[str, Any]:
    backend = Recording(
        "smollm2",
        base_url=server.root + "/v1",
        count=count,
        timeout=timeout,
        turn_timeout=None,
        count_per_text=per_text,
    )
    llm = FiniteMemoryLLM(backend, policy=policy, max_tokens=budget, max_new_tokens=max_new)
    exact = ServerCounter(server.root + "/v1", "smollm2", timeout=timeout)
    if exact.probe() != "llama.cpp":
        raise RuntimeError(f"llama-server's counting endpoints did not answer: {exact.note}")
    said: list[Message] = []  # the whole conversation, nothing evicted
    rows = []
    for i in range(turns):
        before = len(llm.state.archive)
        text = USER[i % len(USER)]
        whole = exact.prompt([*said, Message("user", text)])
        reply = llm.chat(text)
        stats = reply.stats
        said += [Message("user", text), Message("assistant", reply.response)]
        u = backend.usage[-1]
        rows.append(
            {
                "turn": i,
                "fmai": backend.counted[-1],
                "server": u.prompt_tokens,
                "cached": u.reused_tokens or 0,
                "completion": u.completion_tokens,
                "evicted": stats.evicted,
                "evicted_segments": len(llm.state.archive) - before,
                "whole": whole,
                "reply": reply.response,
            }
        )
    ratios = [r["fmai"] / r["server"] for r in rows]
    later = ratios[1:]
    evicting = [r["turn"] for r in rows if r["evicted"]]
    first = evicting[0] if evicting else None
    before_first = rows[:first] if first is not None else rows
    used = max((r["server"] + max_new) / budget for r in before_first) if before_first else 0.0
    needed = (rows[first]["whole"] + max_new) / budget if first is not None else None
    fill = [(r["server"] + max_new) / budget for r in rows]
    after = [f for f, r in zip(fill, rows) if r["evicted"]]
    single = [r["turn"] for r in rows if r["evicted_segments"] == 1 and r["turn"] - 1 in evicting]
    return {
        "budget": budget,
        "max_new_tokens": max_new,
        "count": backend.counting + ("" if per_text else " (affine only)"),
        "ratio_first": round(ratios[0], 3),
        "ratio_median": round(statistics.median(later), 3) if later else None,
        "ratio_worst": round(max(later, key=lambda x: abs(x - 1)), 3) if later else None,
        "ratio_lowest": round(min(later), 3) if later else None,
        "over_budget": sum(1 for r in rows if r["server"] + max_new > budget),
        "cache_share": round(sum(r["cached"] for r in rows) / sum(r["server"] for r in rows), 3),
        "used_before_first_eviction": round(used, 3),
        "needed_at_first_eviction": None if needed is None else round(needed, 3),
        "used_mean": round(statistics.mean(fill), 3),
        "used_on_eviction_turns": round(statistics.mean(after), 3) if after else None,
        "first_eviction": first,
        "evictions": len(evicting),
        "repeated_single_evictions": len(single),
        "turns": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server-bin", default=None, help="llama-server binary (else on PATH)")
    ap.add_argument("--model", default=None, help="GGUF file (else the embedded SmolLM2)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[384, 1024])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--count", nargs="+", default=["auto", "estimate"])
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--policy", default="sliding")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    ap.add_argument(
        "--no-per-text",
        action="store_true",
        help="count without the per-text model (count_per_text=False: the affine fit alone)",
    )
    ap.add_argument("--json", action="store_true", help="print the raw figures")
    args = ap.parse_args(argv)
    binary = args.server_bin or shutil.which("llama-server")
    if binary is None:
        print(
            "No llama-server: pass --server-bin PATH or put llama-server on PATH (docs/hosted.md "
            "says how to build it from the llama-cpp-python sdist). Nothing was measured."
        )
        return 0
    if args.model is not None:
        model = Path(args.model)
    else:
        from fmai_torch.default_model import find_default_gguf

        model = find_default_gguf()
    results = []
    for budget in args.budgets:
        for count in args.count:
            server = LlamaServer(binary, model, ctx=4096, threads=args.threads)
            try:
                results.append(
                    run_one(
                        server,
                        budget,
                        args.max_new_tokens,
                        count,
                        args.turns,
                        args.policy,
                        args.timeout,
                        not args.no_per_text,
                    )
                )
                print(
                    json.dumps({k: v for k, v in results[-1].items() if k != "turns"}),
                    file=sys.stderr,
                    flush=True,
                )
            finally:
                server.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    head = (
        "| budget | counting | ratio turn 0 | ratio median (after) | ratio worst | ratio lowest "
        "| over budget "
        "| cache share | used before 1st eviction | needed at 1st eviction | 1st eviction "
        "| evictions | repeated single | mean used | used on eviction turns |"
    )
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for r in results:
        first = "-" if r["first_eviction"] is None else f"turn {r['first_eviction']}"
        needed = r["needed_at_first_eviction"]
        after = r["used_on_eviction_turns"]
        print(
            f"| {r['budget']} | {r['count']} | {r['ratio_first']} | {r['ratio_median']} | "
            f"{r['ratio_worst']} | {r['ratio_lowest']} | {r['over_budget']}/{len(r['turns'])} | "
            f"{r['cache_share']:.0%} | {r['used_before_first_eviction']:.0%} | "
            f"{'-' if needed is None else format(needed, '.0%')} | {first} | "
            f"{r['evictions']} | {r['repeated_single_evictions']} | {r['used_mean']:.0%} | "
            f"{'-' if after is None else format(after, '.0%')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
