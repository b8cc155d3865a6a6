"""Fresh-process import time of fmai packages, printed as a Markdown table.

Each figure is measured inside a fresh interpreter around the `import X` statement alone, so it
is exactly the cost over a bare interpreter start, free of process-spawn noise; the table gives
the median and the minimum over several fresh interpreters, the bare start for scale, and the
heavy modules each import pulled in.

    python benchmarks/import_time.py fmai_core fmai_core.engine fmai_multilingual fmai_torch

`fmai_core` alone loads names lazily; `fmai_core.engine` is what
`from fmai_core import FiniteMemoryLLM` costs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "transformers", "numpy", "openai", "anthropic", "httpx", "prometheus_client")
RUNS = 15


def _time(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return (time.perf_counter() - start) * 1000


def _import_ms(module: str) -> float:
    code = (
        "import time; t = time.perf_counter(); "
        f"import {module}; print((time.perf_counter() - t) * 1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


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
            rows.append((module, "not installed", "", "", ""))
            continue
        bare = [_time("pass") for _ in range(RUNS)]
        imported = [_import_ms(module) for _ in range(RUNS)]
        rows.append(
            (
                module,
                f"{statistics.median(imported):.1f}",
                f"{min(imported):.1f}",
                f"{statistics.median(bare):.1f}",
                ", ".join(_loaded(module)) or "none",
            )
        )
    print(f"Python {sys.version.split()[0]}, {RUNS} fresh interpreters per package\n")
    print(
        "| package | import cost, median (ms) | import cost, min (ms) | bare start (ms) "
        "| heavy modules loaded |"
    )
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["fmai_core", "fmai_core.engine"])
