"""Policy cost: time per `select()` call at 500 segments, evict and recall modes.

The 500 candidates are the first 500 messages of the recall benchmark's synthetic
conversations (seeded), as `Segment`s with EchoBackend token counts; the query is one of the
planted-fact questions. `evict` asks to keep 20% of the candidates' tokens; `recall` asks
for at most 150 tokens. Each measurement is one call; p50 and p95 are over `--runs` calls,
each on another conversation.

- **warm**: the policy already saw these texts (the per-text caches of terms, hashed
  embeddings and claims are filled), which is the steady state of a conversation, where each
  turn adds one or two new messages;
- **cold**: the caches are cleared before every call (a restored checkpoint, the first turn).

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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fmai_core.policies import POLICY_NAMES, PolicyRequest, get_policy
from fmai_core.relevance import clear_caches
from fmai_core.segments import Segment
from fmai_core.telemetry.metrics import percentile
from fmai_core.testing import MESSAGE_OVERHEAD, tokenize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recall import cpu_model, make_conversation

SEGMENTS = 500


def requests(seed: int, segments: int = SEGMENTS) -> dict[str, PolicyRequest]:
    """The evict and recall requests for one conversation of `segments` messages."""
    conversation = make_conversation(seed, sessions=segments // 60 + 1, turns=30)
    messages = conversation.messages[:segments]
    candidates = tuple(
        Segment(i, i, m.role, m.content, len(tokenize(m.content)) + MESSAGE_OVERHEAD, turn=i // 2)
        for i, m in enumerate(messages)
    )
    query = conversation.probes[0].question
    total = sum(c.tokens for c in candidates)

    def count(text: str) -> int:
        return len(tokenize(text))

    return {
        "evict": PolicyRequest("evict", candidates, total // 5, query=query, count_text=count),
        "recall": PolicyRequest("recall", candidates, 150, query=query, count_text=count),
    }


def measure(runs: int, segments: int = SEGMENTS) -> dict[str, Any]:
    """Time every policy in both modes, warm and cold."""
    batches = [requests(seed, segments) for seed in range(100, 100 + runs)]
    results: dict[str, Any] = {}
    for name in POLICY_NAMES:
        policy = get_policy(name)
        for mode in ("evict", "recall"):
            if mode == "recall" and not policy.recalls:
                continue
            timings: dict[str, list[float]] = {"cold": [], "warm": []}
            for batch in batches:
                request = batch[mode]
                clear_caches()
                start = time.perf_counter()
                policy.select(request)
                timings["cold"].append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                policy.select(request)
                timings["warm"].append((time.perf_counter() - start) * 1000)
            results[f"{name}/{mode}"] = {
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
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    """Render the report as a Markdown table."""
    lines = [
        "| policy | mode | warm p50 (ms) | warm p95 (ms) | cold p50 (ms) | cold p95 (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, r in report["results"].items():
        name, mode = key.split("/")
        lines.append(
            f"| `{name}` | {mode} | {r['warm_p50']:.2f} | {r['warm_p95']:.2f} | "
            f"{r['cold_p50']:.2f} | {r['cold_p95']:.2f} |"
        )
    return "\n".join(lines)


def fragment(report: dict[str, Any], command: str) -> str:
    """The docs fragment."""
    return f"""## Policy cost

Time of one `select()` call over {report["segments"]} segments of synthetic conversation
(EchoBackend token counts, no model signals), p50 and p95 over {report["runs"]} calls on
different conversations. *warm*: the texts were seen before (per-text caches filled, the
steady state of a conversation); *cold*: caches cleared before the call. `evict` keeps 20%
of the candidates' tokens; `recall` returns at most 150 tokens. `sliding` never recalls.
Targets: `sliding` at most 1 ms, the others at most 20 ms (the engine's default
`max_policy_ms` is 200).

{markdown(report)}

Measured with Python {report["python"]} on {report["cpu"]} ({report["cpus"]} logical CPUs,
one used; pure Python, single-threaded). Timings vary: on the project's shared 2-core
development machine (an AMD EPYC virtual machine, other jobs running at the same time) the
same code measured up to about 2x apart from one run to the next, and an earlier run on a
16-core Intel Xeon gave lower figures than that machine. Compare policies within one run,
and rerun on your own hardware:

```bash
pip install -e packages/fmai-core
{command}
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="calls per measurement")
    parser.add_argument("--segments", type=int, default=SEGMENTS, help="candidates per call")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--write", metavar="PATH", help="write the docs fragment to PATH")
    args = parser.parse_args()
    report = measure(args.runs, args.segments)
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    if args.write:
        command = "python benchmarks/policy_cost.py --write docs/benchmarks/policy_cost.md"
        if args.runs != 30:
            command += f" --runs {args.runs}"
        if args.segments != SEGMENTS:
            command += f" --segments {args.segments}"
        Path(args.write).write_text(fragment(report, command), encoding="utf-8")


if __name__ == "__main__":
    main()
