"""Long conversations: does a turn get slower, or memory grow, as the archive fills?

Each policy runs one conversation of `--turns` turns (default 2,000) through
`FiniteMemoryLLM` with `EchoBackend` at `max_tokens=1024`: seeded chit-chat of 15–45 words
per user message over 40 topics, with names, numbers and places, so that the archive's
vocabulary grows as a real one does. Reported per policy:

- the median and p95 of the whole turn's time (`chat()`, wall clock) over the first and the
  last 200 turns, and their ratio (the target: last/first median at most 2x), and the same
  median in CPU time of the thread (`time.thread_time()`: the turn runs in it, policy
  included, as `max_policy_ms` is off), which other processes on a shared machine distort
  much less than the wall clock;
- the policy's own time per turn (`TurnStats.policy_ms`: selection and `prepare`), p50/p95
  over the last 200 turns, when the archive holds the most;
- segments in the archive at the end, and resident memory growth per turn over the last
  1,000 turns (`/proc/self/statm`, after a `gc.collect()`), which includes the record
  itself: the archive keeps every message's text. Beside it, the estimated growth per turn
  over the same turns of its parts (`fmai_core.memo.sizeof`): the record (pinned, summary,
  history and archive segments with their text), the recall index's documents and postings,
  and the memo caches
  (`fmai_core.memo.memo_bytes()`), and what the memos hold at the end;
- then the conversation goes on until the archive holds `--at-archive` segments (default
  5,000), and the policy's time per turn (p50/p95) is taken over the 200 turns after that
  (the target: p95 at most 20 ms), with the p95 of the whole turn's CPU time there (the
  policy's CPU time is part of it).

Each policy runs in its own subprocess so that memory and caches of one do not count
against another. `max_policy_ms` is off, so a slow turn shows as slow instead of falling
back.

Usage:
    python benchmarks/long_conversation.py                 # Markdown table
    python benchmarks/long_conversation.py --at-archive 0  # without the deep-archive column
    python benchmarks/long_conversation.py --write docs/benchmarks/long_conversation.md
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOPICS = (
    "garden kitchen bakery marathon chess violin kayak hiking camera bicycle library museum "
    "pottery jazz theatre football tennis climbing sailing fishing knitting painting poetry "
    "astronomy birdwatching gardening surfing skiing yoga cooking travel movies podcasts "
    "volunteering woodworking photography dancing robotics baking cycling"
).split()
NAMES = "Ada Bruno Carmen Dmitri Elif Farah Goran Hana Ines Jonas Kiri Luca Mira Nadia Omar".split()
PLACES = "Porto Tartu Ghent Oaxaca Bergen Kyoto Lviv Perth Cusco Tromso Leeds Split".split()
VERBS = "tried visited planned booked finished started cancelled enjoyed missed found".split()
FILLER = (
    "honestly it was a long week but the weekend looks calmer and I want to rest a little "
    "before the next busy stretch at work with all the meetings and deadlines piling up"
).split()


def user_message(rng: random.Random, turn: int) -> str:
    topic = rng.choice(TOPICS)
    other = rng.choice(TOPICS)
    words = [
        f"I {rng.choice(VERBS)} the {topic} thing with {rng.choice(NAMES)} in",
        f"{rng.choice(PLACES)} on day {turn}, and we spent {rng.randint(2, 900)} euros.",
    ]
    words += rng.sample(FILLER, rng.randint(5, 25))
    words.append(f"Next time maybe {other} instead?")
    return " ".join(words)


def run_policy(policy: str, turns: int, seed: int, at_archive: int = 0) -> dict[str, Any]:
    from fmai_core import FiniteMemoryLLM
    from fmai_core.memo import memo_bytes, sizeof
    from fmai_core.testing import EchoBackend

    rng = random.Random(seed)
    llm = FiniteMemoryLLM(
        EchoBackend(), policy=policy, max_tokens=1024, max_new_tokens=64, max_policy_ms=None
    )
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        gc.collect()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    wall: list[float] = []
    cpu: list[
        float
    ] = []  # this thread's CPU time: what other processes on the machine cost it less
    policy_ms: list[float] = []

    def parts() -> tuple[int, int, int]:
        """Estimated bytes of the record (segments and their text), the recall index (the
        engine's, read for this measurement only) and the memo caches."""
        state = llm.state
        record = sizeof((state.pinned, state.summary, state.history, state.archive))
        # the index's own documents, postings and lengths (a private member: measured
        # here, never used; its recent archive views share the record's segments)
        index = llm._planner.index
        index_bytes = sizeof((index._docs, index._postings, index._lengths))
        return record, index_bytes, memo_bytes()

    rss_mid = 0
    parts_mid = (0, 0, 0)
    for turn in range(turns):
        if turn == turns - 1000:
            rss_mid = rss()
            parts_mid = parts()
        text = user_message(rng, turn)
        start, start_cpu = time.perf_counter(), time.thread_time()
        stats = llm.chat(text).stats
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.thread_time() - start_cpu) * 1000)
        policy_ms.append(stats.policy_ms)
    rss_end = rss()
    parts_end = parts()
    window = min(200, turns // 2)

    def q(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    first, last = wall[:window], wall[-window:]
    archived = len(llm.state.archive)
    deep: list[float] = []
    deep_cpu: list[float] = []
    turn = turns
    while at_archive and len(deep) < 200:  # on to an archive of `at_archive` segments
        start_cpu = time.thread_time()
        stats = llm.chat(user_message(rng, turn)).stats
        used = (time.thread_time() - start_cpu) * 1000
        turn += 1
        if len(llm.state.archive) >= at_archive:
            deep.append(stats.policy_ms)
            deep_cpu.append(used)
    return {
        "at_archive": at_archive,
        "deep_turns": turn,
        "deep_policy_p50": statistics.median(deep) if deep else None,
        "deep_policy_p95": q(deep, 0.95) if deep else None,
        "deep_cpu_p95": q(deep_cpu, 0.95) if deep_cpu else None,
        "cpu_first_p50": statistics.median(cpu[:window]),
        "cpu_last_p50": statistics.median(cpu[-window:]),
        "cpu_ratio": statistics.median(cpu[-window:]) / max(statistics.median(cpu[:window]), 1e-9),
        "policy": policy,
        "turns": turns,
        "first_p50": statistics.median(first),
        "first_p95": q(first, 0.95),
        "last_p50": statistics.median(last),
        "last_p95": q(last, 0.95),
        "ratio": statistics.median(last) / max(statistics.median(first), 1e-9),
        "policy_p50": statistics.median(policy_ms[-window:]),
        "policy_p95": q(policy_ms[-window:], 0.95),
        "archived": archived,
        "rss_kb_per_turn": (rss_end - rss_mid) / 1024 / 1000 if turns >= 1000 else None,
        # estimated growth per turn over the same 1,000 turns: record, recall index, memos
        "parts_kb_per_turn": [(b - a) / 1024 / 1000 for a, b in zip(parts_mid, parts_end)]
        if turns >= 1000
        else None,
        "memo_kb_end": parts_end[2] / 1024,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| policy | first 200: p50 / p95 ms | last 200: p50 / p95 ms | last / first (p50) "
        "| CPU ms, first / last 200 (p50) | CPU last / first | policy_ms, last 200: p50 / p95 "
        "| archived segments | RSS growth per turn | of which record / index / memos (est.) "
        "| memos at the end | deep archive: policy_ms p50 / p95, "
        "turn CPU p95 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rss = f"{r['rss_kb_per_turn']:.1f} KB" if r["rss_kb_per_turn"] is not None else "–"
        split = "–"
        if r.get("parts_kb_per_turn") is not None:
            split = " / ".join(f"{x:.1f}" for x in r["parts_kb_per_turn"]) + " KB"
        memos = f"{r['memo_kb_end'] / 1024:.1f} MiB" if "memo_kb_end" in r else "–"
        deep = "–"
        if r.get("deep_policy_p95") is not None:
            deep = (
                f"{r['deep_policy_p50']:.1f} / {r['deep_policy_p95']:.1f}, "
                f"{r['deep_cpu_p95']:.1f} ({r['at_archive']:,}+ segments, turns "
                f"{r['deep_turns'] - 200:,}–{r['deep_turns']:,})"
            )
        lines.append(
            f"| {r['policy']} | {r['first_p50']:.1f} / {r['first_p95']:.1f} "
            f"| {r['last_p50']:.1f} / {r['last_p95']:.1f} | {r['ratio']:.2f}x "
            f"| {r['cpu_first_p50']:.1f} / {r['cpu_last_p50']:.1f} | {r['cpu_ratio']:.2f}x "
            f"| {r['policy_p50']:.1f} / {r['policy_p95']:.1f} | {r['archived']:,} | {rss} "
            f"| {split} | {memos} | {deep} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--at-archive", type=int, default=5000, help="then measure at this archive size (0: off)"
    )
    parser.add_argument("--policies", default="sliding,importance,semantic,rolling_summary,hybrid")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a subprocess's policy
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_policy(args.one, args.turns, args.seed, args.at_archive)))
        return 0
    rows = []
    for policy in args.policies.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--one", policy, "--turns", str(args.turns),
             "--seed", str(args.seed), "--at-archive", str(args.at_archive)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout))
        print(f"{policy}: done", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    command = shlex.join(["python", "benchmarks/long_conversation.py", *sys.argv[1:]])
    text = (
        "## Long conversations\n\n"
        "Does a turn get slower as the archive fills? One conversation per policy through "
        "`FiniteMemoryLLM` and `EchoBackend` at `max_tokens=1024` (seeded chit-chat with "
        "names, numbers and places, so the archive's vocabulary grows as a real one does; "
        "`max_policy_ms` off). Per turn: wall clock and the thread's CPU time (the turn, "
        "policy included, runs in it; other processes on a shared machine distort it much "
        "less than the wall clock), over the first and the last 200 turns; then on to an "
        "archive of 5,000 segments, where the policy's time (`TurnStats.policy_ms`) is "
        "taken over 200 more turns. Targets: last / first median at most 2x, and policy "
        "time p95 at most 20 ms at 5,000 archived segments. What keeps a turn's cost off the "
        "archive's size: the recall index is kept incrementally (one message added per "
        "turn), BM25 scans a bounded number of postings per term and hands on only its "
        "best 256 matches, recall's view of a new archive is built from the planner's "
        "change (what it evicted and dropped) rather than by scanning the archive, and the "
        "budget checks find kept segments by bisection. RSS growth includes the record "
        "itself: the archive keeps every message's text.\n\n"
        f"{table(rows)}\n\n"
        f"{args.turns:,} turns per policy, `max_tokens=1024`, EchoBackend, seed {args.seed}; "
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.machine()}, {os.cpu_count()} cores. Command: `{command}`.\n"
    )
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
