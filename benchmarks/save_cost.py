"""What `FiniteMemoryLLM.save` costs a turn on a long conversation, old way and new.

`fmai chat --checkpoint` saves after every turn. A conversation of `--messages` messages
(half of them long enough to be split into parts; torch-free `EchoBackend`, `hybrid`) is
saved after each of `--turns` turns, two ways side by side in one run:

- `full`: `document(snapshot)` then `json.dumps(indent=1)`, what `save` did before it kept
  its segments' JSON between calls;
- `save`: `llm.save(path)`, which encodes only the segments that changed since its last
  save (`write_checkpoint` with the conversation's fragment cache).

Medians of the turns after the first (the first `save` encodes everything). Run:
`python benchmarks/save_cost.py [--messages 6000]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model
from fmai_core import FiniteMemoryLLM, Message
from fmai_core.checkpoint import document, write_atomic
from fmai_core.testing import EchoBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--turns", type=int, default=8)
    args = parser.parse_args()
    llm = FiniteMemoryLLM(EchoBackend(), policy="hybrid", max_tokens=2000, max_new_tokens=50)
    history = []
    for i in range(args.messages // 2):
        history.append(
            Message(
                "user",
                f"Message {i} about the weather in city {i % 50} and my cat Tom. "
                f"Another sentence here, number {i}.",
            )
        )
        history.append(Message("assistant", f"Reply {i}: noted the weather {i % 7}."))
    llm.extend(history)
    folder = Path(tempfile.mkdtemp())
    full_ms, save_ms = [], []
    for turn in range(args.turns):
        llm.chat(f"next {turn}")
        t = time.perf_counter()
        text = json.dumps(document(llm.snapshot()), ensure_ascii=False, indent=1)
        write_atomic(folder / "full.json", text)
        full_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        llm.save(folder / "save.json")
        save_ms.append((time.perf_counter() - t) * 1000)
    out = {
        "cpu": cpu_model(),
        "messages": args.messages,
        "archived_segments": len(llm.state.archive),
        "full_ms_median": round(statistics.median(full_ms[1:]), 1),
        "save_ms_median": round(statistics.median(save_ms[1:]), 1),
        "full_mb": round((folder / "full.json").stat().st_size / 1e6, 2),
        "save_mb": round((folder / "save.json").stat().st_size / 1e6, 2),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
