"""Policy cost: time per `select()` call at 500 segments, evict and recall modes.

The 500 candidates are the first 500 messages of seeded synthetic chit-chat conversations
with planted facts (`_common.make_conversation`), as `Segment`s with EchoBackend token
counts; the query is one of the planted-fact questions. `evict` asks to keep 20% of the
candidates' tokens; `recall` asks for at most 150 tokens. p50 and p95 are over `--runs`
conversations; the time of each is the median of `--repeats` calls, each made in the same
state, which filters out a lone stall of a shared machine without hiding a slow call. Three
situations of a conversation are measured:

- **evict**: the previous eviction saw the oldest 60% of the candidates (another question),
  and the rest arrived since, each prepared by `Policy.prepare` as the engine does when a
  message enters memory; the candidate set is new, as on every eviction;
- **recall, new archive**: the turn of an eviction: the previous turn's recall saw the
  archive without its newest 50 segments, which were prepared when they arrived;
- **recall, same archive**: the usual turn: the previous call saw the same archive with
  another question (what a policy computes from the candidates alone is memoised per
  candidate set).

*cold* clears every cache before the call: texts no call has seen and `prepare` has not
processed (the engine prepares what arrives, and what `load` restores).

Usage:
    python benchmarks/policy_cost.py                 # Markdown table
    python benchmarks/policy_cost.py --json
    python benchmarks/policy_cost.py --write docs/benchmarks/policy_cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import cpu_model, make_conversation
from fmai_core import FiniteMemoryLLM
from fmai_core.policies import POLICY_NAMES, PolicyRequest, get_policy
from fmai_core.relevance import clear_caches
from fmai_core.segments import Segment
from fmai_core.telemetry.metrics import percentile
from fmai_core.testing import MESSAGE_OVERHEAD, EchoBackend, tokenize

SEGMENTS = 500


SITUATIONS = {
    "evict": "evict",
    "recall-new": "recall, new archive",
    "recall-same": "recall, same archive",
}


def requests(
    seed: int, segments: int = SEGMENTS
) -> dict[str, tuple[tuple[PolicyRequest, ...], tuple[Segment, ...], PolicyRequest]]:
    """Per situation: the earlier calls, the segments prepared since, and the measured call."""
    conversation = make_conversation(seed, sessions=segments // 60 + 1, turns=30)
    messages = conversation.messages[:segments]
    candidates = tuple(
        Segment(i, i, m.role, m.content, len(tokenize(m.content)) + MESSAGE_OVERHEAD, turn=i // 2)
        for i, m in enumerate(messages)
    )
    query, previous_query = conversation.probes[0].question, conversation.probes[1].question
    total = sum(c.tokens for c in candidates)

    def count(text: str) -> int:
        return len(tokenize(text))

    evict = PolicyRequest("evict", candidates, total // 5, query=query, count_text=count)
    recall = PolicyRequest("recall", candidates, 150, query=query, count_text=count)
    kept = int(0.6 * len(candidates))
    return {
        "evict": (
            (replace(evict, candidates=candidates[:kept], query=previous_query),),
            candidates[kept:],
            evict,
        ),
        "recall-new": (
            (replace(recall, candidates=candidates[:-50], query=previous_query),),
            candidates[-50:],
            recall,
        ),
        "recall-same": ((replace(recall, query=previous_query),), (), recall),
    }


def measure(runs: int, segments: int = SEGMENTS, repeats: int = 3) -> dict[str, Any]:
    """Time every policy in each situation, warm and cold."""
    batches = [requests(seed, segments) for seed in range(100, 100 + runs)]
    results: dict[str, Any] = {}
    for name in POLICY_NAMES:
        policy = get_policy(name)
        for situation in SITUATIONS:
            if situation != "evict" and not policy.recalls:
                continue
            timings: dict[str, list[float]] = {"cold": [], "warm": []}
            for batch in batches:
                previous, arrived, request = batch[situation]
                calls: dict[str, list[float]] = {"cold": [], "warm": []}
                for _ in range(repeats):
                    clear_caches()
                    start = time.perf_counter()
                    policy.select(request)
                    calls["cold"].append((time.perf_counter() - start) * 1000)
                    clear_caches()
                    for earlier in previous:
                        policy.select(earlier)
                    policy.prepare(arrived)
                    start = time.perf_counter()
                    policy.select(request)
                    calls["warm"].append((time.perf_counter() - start) * 1000)
                for state, values in calls.items():
                    timings[state].append(statistics.median(values))
            results[f"{name}/{situation}"] = {
                f"{state}_{stat}": round(fn(values), 2)
                for state, values in timings.items()
                for stat, fn in (
                    ("p50", statistics.median),
                    ("p95", lambda v: percentile(v, 95)),
                )
            }
    return {
        "segments": segments,
        "runs": runs,
        "repeats": repeats,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "results": results,
    }


def per_turn(
    conversations: int, segments: int = SEGMENTS, budgets: tuple[int, ...] = (2048, 8192)
) -> dict[str, Any]:
    """Policy time per turn of `FiniteMemoryLLM`, with about `segments` segments in memory.

    Each conversation's first `segments - 60` messages are added with `extend`, one turn
    settles the memory (its big first eviction is not counted), then 30 turns are timed, each
    adding a user message and the reply (so memory grows to about `segments`). A turn's
    `policy_ms` covers every policy call it makes: the recall over the archive, and on an
    eviction turn first the evict call over the history.
    """
    results: dict[str, Any] = {}
    for budget in budgets:
        for name in POLICY_NAMES:
            times: list[float] = []
            eviction_times: list[float] = []
            for seed in range(100, 100 + conversations):
                clear_caches()
                conversation = make_conversation(seed, sessions=segments // 60 + 2, turns=30)
                messages = conversation.messages
                start, turns = segments - 60, 30
                llm = FiniteMemoryLLM(
                    EchoBackend(), policy=name, max_tokens=budget, max_new_tokens=16
                )
                llm.extend(messages[:start])
                llm.chat(messages[start].content)
                for i in range(turns):
                    reply = llm.chat(messages[start + 2 + 2 * i].content)
                    times.append(reply.stats.policy_ms)
                    if reply.stats.evicted:
                        eviction_times.append(reply.stats.policy_ms)
            results[f"{budget}/{name}"] = {
                "p50": round(statistics.median(times), 2),
                "p95": round(percentile(times, 95), 2),
                "max": round(max(times), 2),
                "turns": len(times),
                "eviction_turns": len(eviction_times),
                "eviction_p50": (
                    round(statistics.median(eviction_times), 2) if eviction_times else None
                ),
            }
    return {"conversations": conversations, "segments": segments, "results": results}


def markdown_turns(report: dict[str, Any]) -> str:
    """Render the per-turn report as a Markdown table."""
    lines = [
        "| max_tokens | policy | p50 (ms) | p95 (ms) | max (ms) | eviction turns | "
        "their p50 (ms) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, r in report["results"].items():
        budget, name = key.split("/")
        evicting = "–" if r["eviction_p50"] is None else f"{r['eviction_p50']:.2f}"
        lines.append(
            f"| {budget} | `{name}` | {r['p50']:.2f} | {r['p95']:.2f} | {r['max']:.2f} | "
            f"{r['eviction_turns']} of {r['turns']} | {evicting} |"
        )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """Render the report as a Markdown table."""
    lines = [
        "| policy | call | warm p50 (ms) | warm p95 (ms) | cold p50 (ms) | cold p95 (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, r in report["results"].items():
        name, situation = key.split("/")
        lines.append(
            f"| `{name}` | {SITUATIONS[situation]} | {r['warm_p50']:.2f} | {r['warm_p95']:.2f} | "
            f"{r['cold_p50']:.2f} | {r['cold_p95']:.2f} |"
        )
    return "\n".join(lines)


def fragment(report: dict[str, Any], command: str, title: str = "Policy cost") -> str:
    """The docs fragment."""
    return f"""## {title}

Time of one `select()` call over {report["segments"]} segments of synthetic conversation
(EchoBackend token counts, no model signals), p50 and p95 over {report["runs"]}
conversations; each conversation's figure is the median of {report["repeats"]} calls made in
the same state. `evict` keeps 20% of the candidates' tokens; `recall` returns at most 150
tokens. *warm* is the state in a running conversation:

- **evict**: the previous eviction saw the oldest 60% of the segments (another question)
  and the rest arrived since, each prepared by `Policy.prepare` as the engine does when a
  message enters memory: the candidate set is new, as on every eviction;
- **recall, new archive**: the turn of an eviction: the previous recall saw the archive
  without its newest 50 segments, which were prepared when they arrived;
- **recall, same archive**: the usual turn, between evictions: the previous call saw the
  same archive with another question. What a policy computes from the candidates alone
  (the BM25 index, the information proxy) is memoised for the last few candidate sets, so
  such a call only scores the new question.

*cold* clears every cache first: texts never prepared (the engine prepares what arrives and
what `load` restores, so in a conversation this is rare). A turn with an
eviction makes an evict call and then a recall call over the new archive. `sliding` never
recalls. Targets: `sliding` at most 1 ms, the others at most 20 ms per call (the engine's
default `max_policy_ms` is 200).

{markdown(report)}

### Per turn

What a conversation pays: `TurnStats.policy_ms` of `FiniteMemoryLLM` turns (EchoBackend,
`max_new_tokens=16`, the engine's defaults), with about {report["per_turn"]["segments"]}
segments in memory (history plus archive). For each of {report["per_turn"]["conversations"]}
conversations, all but the last 60 messages are added with `extend`, one turn settles the
memory (its large first eviction is not counted), then 30 turns are timed, each with a
user message of the conversation (longer than the questions above, so relevance costs
more). A turn's time covers every policy call it makes, including the deadline thread:
the recall over the archive and, on an eviction turn, the evict call before it. At
`max_tokens` = 2048 the history holds about 55 segments and the archive the rest; at 8192
the history holds about half of them and no turn evicts. A turn's time includes
`Policy.prepare` of its message and reply.

{markdown_turns(report["per_turn"])}

Measured with Python {report["python"]} on {report["cpu"]} ({report["cpus"]} logical CPUs,
one used; pure Python, single-threaded). Timings vary from machine to machine and from run
to run: on the project's shared 2-core development machine the same code measured up to
about 2x apart between runs. Compare policies within one run, and rerun on your own
hardware:

```bash
pip install -e packages/fmai-core
{command}
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="calls per measurement")
    parser.add_argument("--segments", type=int, default=SEGMENTS, help="candidates per call")
    parser.add_argument("--repeats", type=int, default=3, help="calls per conversation (median)")
    parser.add_argument(
        "--conversations", type=int, default=10, help="conversations of the per-turn table"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--write", metavar="PATH", help="write the docs fragment to PATH")
    parser.add_argument("--title", default="Policy cost", help="heading of the docs fragment")
    args = parser.parse_args()
    report = measure(args.runs, args.segments, args.repeats)
    report["per_turn"] = per_turn(args.conversations, args.segments)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(markdown(report) + "\n\n" + markdown_turns(report["per_turn"]))
    if args.write:
        command = shlex.join(["python", "benchmarks/policy_cost.py", *sys.argv[1:]])
        Path(args.write).write_text(fragment(report, command, args.title), encoding="utf-8")


if __name__ == "__main__":
    main()
