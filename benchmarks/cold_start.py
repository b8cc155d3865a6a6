"""Cold start of `fmai chat`: seconds until it is ready for the first message, and where they go.

    uv run python benchmarks/cold_start.py [--rounds 3] [--json PATH]
    uv run python benchmarks/cold_start.py --quick --pycache /tmp/fmai-pycache   # ~1 minute

Each measurement is a fresh Python process, and the rounds interleave them (on a shared
machine the ratios within a round are steadier than the absolute times):

- `import torch`;
- `import transformers.models.llama.modeling_llama` (what `HFBackend` needs; it pulls in
  `torch.distributed.tensor` and, through it, sympy);
- the same with `torch.distributed.is_available()` answering `False` during the import (an
  experiment that measures what `torch.distributed.tensor` costs; fmai does not do this);
- `fmai chat --no-embedder` and `fmai chat` (with the default sentence embedder) from start
  until the prompt `you>` is on offer (the converted model already in the cache).

Bytecode: `PYTHONDONTWRITEBYTECODE=1` is honoured as set; `--pycache DIR` sets
`PYTHONPYCACHEPREFIX` (run twice: the first run writes the bytecode, the second reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import cpu_model

CODE = {
    "import torch": "import torch",
    "import modeling_llama": "import transformers.models.llama.modeling_llama",
    "import modeling_llama, no torch.distributed": (
        "import torch, torch.distributed as d; d.is_available = lambda: False; "
        "import transformers.models.llama.modeling_llama"
    ),
}


def timed_code(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def timed_chat(extra: list[str], env: dict[str, str]) -> float:
    """Seconds from starting `fmai chat` to its prompt (then it is told to quit)."""
    cmd = [sys.executable, "-m", "fmai_torch.cli", "chat", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and proc.stdin is not None
    ready = None
    for line in proc.stderr:
        if line.startswith("fmai chat:"):  # printed right before the first `you>` prompt
            ready = time.perf_counter() - start
            break
    proc.stdin.write("/quit\n")
    proc.stdin.close()
    proc.wait(timeout=120)
    if ready is None:
        raise RuntimeError("fmai chat exited before it was ready")
    return ready


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pycache", default=None, help="PYTHONPYCACHEPREFIX for the runs")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round; `import torch`, `import modeling_llama` and `fmai chat --no-embedder` only",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    env = dict(os.environ)
    if args.pycache:
        env["PYTHONPYCACHEPREFIX"] = args.pycache
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    timing: dict[str, list[float]] = {}
    timed_chat(["--no-embedder"], env)  # converts / packs the model if the cache is cold
    for _ in range(args.rounds):
        for name, code in CODE.items():
            if args.quick and "no torch.distributed" in name:
                continue
            timing.setdefault(name, []).append(timed_code(code, env))
        timing.setdefault("fmai chat --no-embedder", []).append(timed_chat(["--no-embedder"], env))
        if not args.quick:
            timing.setdefault("fmai chat", []).append(timed_chat([], env))
    bytecode = "PYTHONPYCACHEPREFIX" if args.pycache else "PYTHONDONTWRITEBYTECODE"
    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "bytecode": bytecode if args.pycache or env.get("PYTHONDONTWRITEBYTECODE") else "default",
        "seconds": timing,
        "median_s": {k: statistics.median(v) for k, v in timing.items()},
    }
    print(f"{result['cpu']}, {result['cores']} cores, bytecode: {result['bytecode']}")
    print()
    print("| step (fresh process) | median s | runs |")
    print("| --- | ---: | --- |")
    for name, values in timing.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {statistics.median(values):.1f} | {runs} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
