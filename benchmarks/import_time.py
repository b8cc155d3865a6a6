"""Fresh-process import time of fmai packages, printed as a Markdown table.

Each figure is measured inside a fresh interpreter around the statement alone, so it is
exactly the cost over a bare interpreter start, free of process-spawn noise; the table gives
the median and the minimum over several fresh interpreters, the bare start for scale, and the
heavy modules each statement pulled in.

    python benchmarks/import_time.py                      # the default rows
    python benchmarks/import_time.py fmai_core "from fmai_core import FiniteMemoryLLM"
    python benchmarks/import_time.py --runs 10 --write docs/benchmarks/imports.md

An argument with a space in it is a statement; one without is a module to import. Each
statement is run once first with bytecode writing on, so the timed runs read cached bytecode,
as an installed package does from its second import on (even where `PYTHONDONTWRITEBYTECODE`
is set; compiling fmai-core's engine from source adds about 11 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "transformers", "numpy", "openai", "anthropic", "httpx", "prometheus_client")
RUNS = 15
#: Default rows: modules, or statements (with a space in them).
DEFAULT = (
    "fmai_core",
    "from fmai_core import FiniteMemoryLLM",
    "from fmai_core import FiniteMemoryLLM; from fmai_core.testing import EchoBackend; "
    "FiniteMemoryLLM(EchoBackend())",
    "fmai_multilingual",
    "fmai_torch",
)
_WARM_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _statement(item: str) -> str:
    return item if " " in item else f"import {item}"


def _run(code: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    return out.stdout


def _bare_ms() -> float:
    start = time.perf_counter()
    _run("pass")
    return (time.perf_counter() - start) * 1000


def _statement_ms(statement: str) -> float:
    code = (
        f"import time; t = time.perf_counter()\n{statement}\n"
        "print((time.perf_counter() - t) * 1000)"
    )
    return float(_run(code).strip().splitlines()[-1])


def _loaded(statement: str) -> list[str]:
    code = (
        f"{statement}\nimport sys, json\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    loaded: list[str] = json.loads(_run(code, _WARM_ENV).strip().splitlines()[-1])
    return loaded


def _label(item: str) -> str:
    if item == DEFAULT[2]:
        return "first `FiniteMemoryLLM(EchoBackend())` (import included)"
    return f"`{_statement(item)}`"


def main(items: list[str], runs: int = RUNS) -> str:
    """Print (and return) the table for `items` (modules or statements)."""
    rows = []
    for item in items:
        statement = _statement(item)
        try:
            heavy = _loaded(statement)  # also the warm-up: writes the bytecode cache
        except subprocess.CalledProcessError:
            rows.append((_label(item), "not installed", "", "", ""))
            continue
        bare = [_bare_ms() for _ in range(runs)]
        timed = [_statement_ms(statement) for _ in range(runs)]
        rows.append(
            (
                _label(item),
                f"{statistics.median(timed):.1f}",
                f"{min(timed):.1f}",
                f"{statistics.median(bare):.1f}",
                ", ".join(heavy) or "none",
            )
        )
    lines = [
        f"Python {sys.version.split()[0]}, {runs} fresh interpreters per row, bytecode cached, "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)",
        "",
        "| statement | cost, median (ms) | cost, min (ms) | bare start (ms) "
        "| heavy modules loaded |",
        "| --- | ---: | ---: | ---: | --- |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    table = "\n".join(lines)
    print(table)
    return table


FRAGMENT = """## Import time

What importing each package costs in a fresh interpreter, measured around the statement
itself (so it is the cost over a bare interpreter start), and which heavy modules it pulls
in. Names load lazily (PEP 562): `import fmai_core` loads only the standard library;
`from fmai_core import FiniteMemoryLLM` loads the engine and the values it returns (messages,
segments, stats), while the planner, the policies and the recall index with its relevance
scorers are imported when the first conversation is built (the third row); asyncio loads on
the first async call, logging only when a policy fails. `fmai_torch` imports torch only when
a model is used (so `fmai --help` is instant).

{table}

About 13 ms of each fmai-core row is the standard library's `dataclasses` (with `inspect`),
`typing`, `re` and `threading`, which every row needs. Without a bytecode cache
(`PYTHONDONTWRITEBYTECODE` set and no `.pyc` yet) fmai's own modules compile on every
import: about 11 ms more for the second row. The figures move with machine load; the
minimum is the steadier one on a busy machine.

```bash
uvx nox -s imports      # or: python benchmarks/import_time.py --write docs/benchmarks/imports.md
```
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="*", help="modules or statements (default: fmai's rows)")
    parser.add_argument("--runs", type=int, default=RUNS, help="fresh interpreters per row")
    parser.add_argument("--write", metavar="PATH", help="also write the docs fragment here")
    args = parser.parse_args()
    result = main(args.items or list(DEFAULT), args.runs)
    if args.write:
        with open(args.write, "w", encoding="utf-8") as fh:
            fh.write(FRAGMENT.format(table=result))
