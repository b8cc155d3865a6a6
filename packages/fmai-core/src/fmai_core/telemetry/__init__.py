"""Telemetry: per-turn hooks, in-process metrics, Prometheus exposition and a JSONL turn log.

The engine calls `hook.on_turn(stats)` after every completed turn for each hook given as
`FiniteMemoryLLM(..., hooks=[...])`. A hook is any object with that method (see
[`TurnHook`][fmai_core.telemetry.TurnHook]); a hook that raises is logged on the `"fmai"`
logger and the turn goes on (see [`call_hooks`][fmai_core.telemetry.call_hooks]).

Importing this module loads only the standard library: `prometheus_client` is imported
when a [`PrometheusExporter`][fmai_core.telemetry.PrometheusExporter] is built.

Example:
    ```python
    from fmai_core import FiniteMemoryLLM
    from fmai_core.telemetry import JSONLTurnLog, Metrics
    from fmai_core.testing import EchoBackend

    metrics = Metrics(window=1000)
    llm = FiniteMemoryLLM(EchoBackend(), hooks=[metrics, JSONLTurnLog("turns.jsonl")])
    llm.chat("hello")
    print(metrics.snapshot()["latency_ms"]["p95"])
    ```
"""

from __future__ import annotations

from fmai_core.telemetry.hooks import TurnHook, call_hooks
from fmai_core.telemetry.jsonl import JSONLTurnLog
from fmai_core.telemetry.metrics import Metrics, percentile
from fmai_core.telemetry.prometheus import PrometheusExporter

__all__ = [
    "JSONLTurnLog",
    "Metrics",
    "PrometheusExporter",
    "TurnHook",
    "call_hooks",
    "percentile",
]
