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
import os
import platform
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


def main(modules: list[str]) -> str:
    """Print (and return) the table for `modules`."""
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
    lines = [
        f"Python {sys.version.split()[0]}, {RUNS} fresh interpreters per package, "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)",
        "",
        "| package | import cost, median (ms) | import cost, min (ms) | bare start (ms) "
        "| heavy modules loaded |",
        "| --- | ---: | ---: | ---: | --- |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    table = "\n".join(lines)
    print(table)
    return table


FRAGMENT = """## Import time

What importing each package costs in a fresh interpreter, measured around the `import`
statement itself (so it is the cost over a bare interpreter start), and which heavy modules
it pulls in. `fmai_core` and `fmai_torch` load their names lazily (PEP 562):
`import fmai_core` loads only the standard library, `fmai_core.engine` is what
`from fmai_core import FiniteMemoryLLM` costs, and `fmai_torch` imports torch only when a
model is used (so `fmai --help` is instant).

{table}

```bash
uvx nox -s imports      # or: python benchmarks/import_time.py --write docs/benchmarks/imports.md
```
"""


if __name__ == "__main__":
    args = sys.argv[1:]
    write = None
    if "--write" in args:
        i = args.index("--write")
        write = args[i + 1]
        del args[i : i + 2]
    result = main(args or ["fmai_core", "fmai_core.engine", "fmai_multilingual", "fmai_torch"])
    if write:
        with open(write, "w", encoding="utf-8") as fh:
            fh.write(FRAGMENT.format(table=result))
