"""Context-build cost: `llm.context(question)` with 600 turns in memory, per policy.

The conversation is the recall benchmark's (`benchmarks/recall.py`, same seed): dated
sessions between two named speakers, fed to `FiniteMemoryLLM(EchoBackend(), policy,
max_tokens=10% of the conversation's tokens, max_new_tokens=32, system_prompt=None,
max_policy_ms=None)` session by session as that benchmark does (`extend` + one `chat`),
until `--turns` turns are in memory (sessions of a second generated conversation follow the
first when it is shorter, with its speakers renamed). Then each of the recall benchmark's
questions for these conversations (`--queries` of them, cycled) is timed as one
`llm.context(question)` call: the whole prompt build (planning, the query-dependent budget
split, retrieval, the context builder), wall clock, p50 and p90 after `--warmup` calls.

Two paths:

- **torch-free**: no embedder (fmai-core alone);
- **`SentenceEmbedder`** (`--embedder`): `fmai_torch.SentenceEmbedder()` (all-MiniLM-L6-v2)
  as `FiniteMemoryLLM(embedder=...)`. The turns are embedded as they enter memory (not
  timed); every timed call embeds its question afresh (no two timed queries have the same
  text, so the index's memo of query vectors never answers), so the figure includes the
  query's embedding.

Targets (issue 10): p50 <= 20 ms torch-free and <= 40 ms with the model embedder.

Usage:
    python benchmarks/context_cost.py                          # torch-free, Markdown
    python benchmarks/context_cost.py --embedder               # both paths
    python benchmarks/context_cost.py --policies hybrid --json
    python benchmarks/context_cost.py --embedder --write docs/benchmarks/context_cost.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import recall as bench
from _common import cpu_model
from fmai_core import FiniteMemoryLLM, Message
from fmai_core.telemetry.metrics import percentile
from fmai_core.testing import EchoBackend

POLICIES = ("importance", "semantic", "rolling_summary", "hybrid")


def conversation(seed: int, turns: int) -> tuple[list[list[Message]], list[str]]:
    """Sessions holding `turns` turns in all, and the questions asked about them."""
    sessions: list[list[Message]] = []
    questions: list[str] = []
    index = 0
    first: tuple[str, str] | None = None
    while sum(map(len, sessions)) < turns:
        conv, _ = bench.make_conversation(seed, index)
        names = dict(zip(conv.speakers, first or conv.speakers))
        first = first or conv.speakers
        for session in conv.sessions:
            room = turns - sum(map(len, sessions))
            if room <= 0:
                break
            sessions.append(
                [
                    Message(
                        m.role,
                        m.content,
                        name=names.get(m.name or "", m.name),
                        timestamp=m.timestamp,
                    )
                    for m in session[:room]
                ]
            )
        questions += [q.text for q in conv.questions]
        index += 1
    return sessions, list(dict.fromkeys(questions))


def measure(
    policy: str,
    sessions: list[list[Message]],
    questions: list[str],
    embedder: Any,
    *,
    queries: int,
    warmup: int,
) -> dict[str, Any]:
    backend = EchoBackend(reply=bench._reply)
    total = backend.count_tokens([m for s in sessions for m in s])
    llm = FiniteMemoryLLM(
        backend,
        policy=policy,
        max_tokens=max(bench.MAX_NEW_TOKENS + 64, int(total * 0.10)),
        max_new_tokens=bench.MAX_NEW_TOKENS,
        system_prompt=None,
        max_policy_ms=None,
        embedder=embedder,
    )
    for session in sessions:
        if session[-1].role == "user":
            llm.extend(session[:-1])
            llm.chat(session[-1].content)
        else:
            llm.extend(session)
            llm.chat(bench.CLOSING)
    # Distinct questions for every call, so the index's memo of query vectors never
    # answers: the query's embedding is part of the cost measured.
    texts = questions[: warmup + queries]
    if len(texts) < warmup + queries:
        raise SystemExit(f"only {len(questions)} distinct questions; lower --queries")
    times = []
    for i, text in enumerate(texts):
        t0 = time.perf_counter()
        llm.context(text)
        ms = (time.perf_counter() - t0) * 1000
        if i >= warmup:
            times.append(ms)
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p90_ms": round(percentile(times, 90), 2),
        "max_tokens": llm.max_tokens,
        "turns": sum(map(len, sessions)),
        "calls": len(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--turns", type=int, default=600)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--embedder", action="store_true", help="also with SentenceEmbedder")
    ap.add_argument("--threads", type=int, help="SentenceEmbedder(threads=...)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", metavar="PATH", help="write the Markdown table to PATH")
    args = ap.parse_args()
    sessions, questions = conversation(args.seed, args.turns)
    paths: list[tuple[str, Any]] = [("torch-free", None)]
    if args.embedder:
        from fmai_torch import SentenceEmbedder  # type: ignore[attr-defined]

        label = "SentenceEmbedder" + (f"(threads={args.threads})" if args.threads else "")
        paths.append((label, SentenceEmbedder(threads=args.threads)))
    rows = []
    for path, embedder in paths:
        for policy in args.policies.split(","):
            row = measure(
                policy, sessions, questions, embedder, queries=args.queries, warmup=args.warmup
            )
            rows.append({"path": path, "policy": policy, **row})
            if not args.json:
                print(f"  {path} {policy}: p50 {row['p50_ms']} ms", file=sys.stderr)
    report = {
        "command": shlex.join(["python", "benchmarks/context_cost.py", *sys.argv[1:]]),
        "machine": f"{platform.platform()}, {cpu_model()}, Python {platform.python_version()}",
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(markdown(report))
    if args.write:
        Path(args.write).write_text(markdown(report), encoding="utf-8")


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    out = [
        f"`llm.context(question)` with {rows[0]['turns']} turns in memory, "
        f"`max_tokens={rows[0]['max_tokens']}` (10% of them), {rows[0]['calls']} questions "
        "each (targets: p50 at most 20 ms torch-free, 40 ms with the model embedder, the "
        "query's embedding included):",
        "",
        "| path | policy | p50 | p90 |",
        "| --- | --- | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['path']} | `{r['policy']}` | {r['p50_ms']:.1f} ms | {r['p90_ms']:.1f} ms |"
        )
    out += ["", f"On {report['machine']}.", "", "```bash", report["command"], "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
