"""`import fmai_core` must stay light: checked in a fresh interpreter (import state is global)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = [
    "torch",
    "transformers",
    "numpy",
    "httpx",
    "openai",
    "anthropic",
    "prometheus_client",
    "fmai_torch",
    "fmai_multilingual",
]


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import fmai_core",
        "from fmai_core import FiniteMemoryLLM, Message, TurnStats",
        "import fmai_core.backends",
        "import fmai_core.testing",
        "from fmai_core.policies import get_policy; get_policy('sliding')",
    ],
)
def test_core_imports_load_no_heavy_module(code: str) -> None:
    loaded = _loaded_after(code)
    leaked = [m for m in HEAVY if m in loaded or any(x.startswith(m + ".") for x in loaded)]
    assert leaked == [], f"{code!r} loaded {leaked}"


def test_core_import_does_not_load_asyncio() -> None:
    # asyncio costs tens of milliseconds; the async API imports it on first use.
    assert "asyncio" not in _loaded_after("import fmai_core")


def test_engine_import_defers_planning_asyncio_and_logging() -> None:
    # `from fmai_core import FiniteMemoryLLM` loads the engine and the values it returns; the
    # planner, policies and recall index load when a conversation is built, asyncio on the
    # first async call, logging when a policy fails (docs/benchmarks.md, "Import time").
    deferred = ["asyncio", "logging", "fmai_core.planner", "fmai_core.policies"]
    deferred += ["fmai_core.retrieval", "fmai_core.relevance"]
    loaded = _loaded_after("from fmai_core import FiniteMemoryLLM")
    assert [m for m in deferred if m in loaded] == []


def test_sync_turn_with_echo_backend_loads_no_asyncio_or_logging() -> None:
    code = (
        "from fmai_core import FiniteMemoryLLM\n"
        "from fmai_core.testing import EchoBackend\n"
        "FiniteMemoryLLM(EchoBackend(), max_tokens=256, max_new_tokens=32).chat('Hello there.')"
    )
    loaded = _loaded_after(code)
    assert "asyncio" not in loaded
    assert "logging" not in loaded
