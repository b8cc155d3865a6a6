"""Fresh-process import time of fmai packages, printed as a Markdown table.

Each figure is the median over several fresh interpreters of (time to run `import X`) minus
(time to run an empty interpreter), and the heavy modules each import pulled in.

    python benchmarks/import_time.py fmai_core fmai_multilingual fmai_torch
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "transformers", "numpy", "openai", "anthropic", "httpx", "prometheus_client")
RUNS = 7


def _time(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return (time.perf_counter() - start) * 1000


def _loaded(module: str) -> list[str]:
    code = (
        f"import sys, json; import {module}; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def main(modules: list[str]) -> None:
    """Print the table for `modules`."""
    rows = []
    for module in modules:
        try:
            _loaded(module)
        except subprocess.CalledProcessError:
            rows.append((module, "not installed", "", ""))
            continue
        bare, imported = [], []
        for _ in range(RUNS):  # interleave, so machine noise hits both alike
            bare.append(_time("pass"))
            imported.append(_time(f"import {module}"))
        over = statistics.median(imported) - statistics.median(bare)
        rows.append(
            (
                module,
                f"{over:.1f}",
                f"{statistics.median(bare):.1f}",
                ", ".join(_loaded(module)) or "none",
            )
        )
    print(f"Python {sys.version.split()[0]}, median of {RUNS} fresh interpreters\n")
    print("| package | import cost over bare start (ms) | bare start (ms) | heavy modules loaded |")
    print("| --- | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["fmai_core"])
