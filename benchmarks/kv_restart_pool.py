"""Persistent KV and the conversation pool on the embedded model (CPU), side by side.

- **restart**: a conversation of `--turns` turns is saved with `save(path, kv=True)`. Then
  the next turn is run three ways on a fresh `HFBackend` over the same loaded model (as
  after a restart, without the model's own load time): restored with its saved KV, loaded
  without it (`kv=False`, a full re-prefill), and, for reference, as a warm turn of the
  original conversation. Reported: time to first token, the KV restore time (part of
  `load`), and the KV file's size per 1k cached tokens.
- **pool**: `--conversations` (100) conversations, round-robin, two rounds, on one backend
  whose device budget holds `--pool` (10) of their caches; with host memory unlimited (round
  two restores from host) and with no host memory and a disk folder (restores from disk).
  Each round-two turn is also run on a backend that recomputes, for the re-prefill time.
  Reported: median TTFT by where the cache came from, the process's peak RSS before and
  after, and on CUDA (`--device cuda`) the peak device memory allocated by torch.

Run: `python benchmarks/kv_restart_pool.py --json docs/benchmarks/kv_restart_pool.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model
from fmai_core import FiniteMemoryLLM
from fmai_core.engine import kv_path
from kv_cache_gpu import user_message
from kv_edit import SYSTEM, USER


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device_peak_mb(reset: bool = False) -> float | None:
    """Peak CUDA memory torch allocated (MB) since the last reset, or `None` off CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    peak = torch.cuda.max_memory_allocated() / 2**20
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return peak


def restart(model: Any, tok: Any, threads: int | None, turns: int, trials: int) -> dict[str, Any]:
    from fmai_torch import HFBackend

    def backend() -> Any:
        b = HFBackend(model, tokenizer=tok)
        b.threads = threads
        return b

    kw = {"policy": "sliding", "max_tokens": 2048, "max_new_tokens": 24, "system_prompt": SYSTEM}
    llm = FiniteMemoryLLM(backend(), **kw)
    for text in USER[:turns]:
        llm.chat(text)
    folder = Path(tempfile.mkdtemp(prefix="fmai-kv-restart-"))
    path = folder / "chat.json"
    t0 = time.perf_counter()
    llm.save(path, kv=True)
    save_ms = (time.perf_counter() - t0) * 1000
    size = Path(kv_path(path)).stat().st_size
    cached = llm.backend.cached_tokens
    nxt = USER[turns]
    rows: dict[str, list[float]] = {"restored": [], "re_prefill": [], "restore_ms": []}
    for _ in range(trials):
        for kv in (True, False):
            t0 = time.perf_counter()
            resumed = FiniteMemoryLLM.load(path, backend(), kv=kv)
            load_ms = (time.perf_counter() - t0) * 1000
            s = resumed.chat(nxt, max_new_tokens=1).stats
            rows["restored" if kv else "re_prefill"].append(s.ttft_ms)
            rows.setdefault("load_ms_kv" if kv else "load_ms_plain", []).append(load_ms)
    warm = llm.chat(nxt, max_new_tokens=1).stats
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    return {
        "cached_tokens": cached,
        "kv_file_bytes": size,
        "kv_bytes_per_1k_tokens": round(size / cached * 1000),
        "save_ms": round(save_ms, 1),
        "ttft_ms_warm": warm.ttft_ms,
        "warm_reused": warm.reused_tokens,
        "warm_prompt": warm.prompt_tokens,
        "ttft_ms_restored_median": med["restored"],
        "ttft_ms_re_prefill_median": med["re_prefill"],
        "restore_ms_median": med["load_ms_kv"] - med["load_ms_plain"],
        "first_turn_vs_warm": (med["restored"] + med["load_ms_kv"] - med["load_ms_plain"])
        / warm.ttft_ms,
        "trials": rows,
    }


def pool(
    model: Any, tok: Any, threads: int | None, n: int, hold: int, words: int, disk: bool
) -> dict[str, Any]:
    from fmai_torch import HFBackend

    rss_before = _rss_mb()
    _device_peak_mb(reset=True)
    rng = random.Random(1)
    first = [user_message(rng, words) for _ in range(n)]
    second = [user_message(rng, words // 2) for _ in range(n)]
    kw = {"policy": "sliding", "max_tokens": 2048, "max_new_tokens": 1, "system_prompt": SYSTEM}
    probe = HFBackend(model, tokenizer=tok)
    probe.threads = threads
    FiniteMemoryLLM(probe, **kw).chat(first[0])
    per = probe._kv.nbytes
    folder = tempfile.mkdtemp(prefix="fmai-kv-pool-")
    shared = HFBackend(
        model,
        tokenizer=tok,
        kv_device_bytes=per * hold,
        kv_host_bytes=0 if disk else None,
        kv_disk_dir=folder if disk else None,
    )
    shared.threads = threads
    plain = HFBackend(model, tokenizer=tok, kv_reuse=False)
    plain.threads = threads
    convs = [FiniteMemoryLLM(shared.conversation(f"c{i}"), **kw) for i in range(n)]
    refs = [FiniteMemoryLLM(plain, **kw) for _ in range(n)]
    by_source: dict[str, list[float]] = {}
    re_prefill: list[float] = []
    peak_device = peak_host = 0
    for i in range(n):
        convs[i].chat(first[i])
        refs[i].extend([convs[i].messages()[-2], convs[i].messages()[-1]])
        peak_device = max(peak_device, shared.pool.bytes("device"))
        peak_host = max(peak_host, shared.pool.bytes("host"))
    for i in range(n):
        if i % 2:
            s = convs[i].chat(second[i]).stats
            r = refs[i].chat(second[i]).stats
        else:
            r = refs[i].chat(second[i]).stats
            s = convs[i].chat(second[i]).stats
        by_source.setdefault(s.kv.get("cache_from", "?"), []).append(s.ttft_ms)
        re_prefill.append(r.ttft_ms)
        peak_device = max(peak_device, shared.pool.bytes("device"))
        peak_host = max(peak_host, shared.pool.bytes("host"))
    return {
        "conversations": n,
        "pool_holds": hold,
        "bytes_per_conversation": per,
        "disk": disk,
        "ttft_ms_median_by_source": {k: statistics.median(v) for k, v in by_source.items()},
        "turns_by_source": {k: len(v) for k, v in by_source.items()},
        "ttft_ms_median_re_prefill": statistics.median(re_prefill),
        "peak_device_bytes": peak_device,
        "peak_host_bytes": peak_host,
        "moves": dict(shared.pool.moves),
        "peak_rss_mb_before": rss_before,
        "peak_rss_mb": _rss_mb(),
        "peak_device_mb": _device_peak_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--words", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--what", choices=("restart", "pool", "both"), default="both")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from fmai_torch import HFBackend

    base = HFBackend("default", device=args.device, weights="fp32", threads=args.threads)
    out: dict[str, Any] = {
        "setup": {"cpu": cpu_model(), "threads": args.threads, "device": str(base.device)}
    }

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1, default=str))

    if args.what in ("restart", "both"):
        out["restart"] = restart(base.model, base.tokenizer, base.threads, args.turns, args.trials)
        print(json.dumps(out["restart"], indent=1, default=str), flush=True)
        save()
    for disk in (False, True) if args.what in ("pool", "both") else ():
        key = "pool_disk" if disk else "pool_host"
        out[key] = pool(
            base.model,
            base.tokenizer,
            base.threads,
            args.conversations,
            args.pool,
            args.words,
            disk,
        )
        print(json.dumps(out[key], indent=1), flush=True)
        save()


if __name__ == "__main__":
    main()
