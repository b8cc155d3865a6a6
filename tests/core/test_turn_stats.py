"""TurnStats: reuse that was not reported, estimated fields, and one clock for ttft."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backend import Generation, Usage
from fmai_core.stats import TurnStats
from fmai_core.telemetry import JSONLTurnLog, Metrics, PrometheusExporter
from fmai_core.testing import EchoBackend


class NoReuseReport(EchoBackend):
    """A backend that reports no cache reuse, no prompt count and no wait for a first token.

    It notes how long each count through it took, so a test can tell a part of planning.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counted: list[float] = []  # ms of each count_tokens call
        self.planned: list[float] = []  # those made before the last generation

    def count_tokens(self, messages: Sequence[Message]) -> int:
        start = time.perf_counter()
        try:
            return super().count_tokens(messages)
        finally:
            self.counted.append((time.perf_counter() - start) * 1000)

    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        self.planned, self.counted = self.counted, []
        gen = super().generate(messages, **params)
        u = gen.usage
        usage = Usage(0, None, 0, u.completion_tokens)
        return Generation(gen.text, usage, gen.latency_ms, 0.0, gen.finish_reason)


def test_unreported_reuse_is_none_and_the_planners_count_is_marked() -> None:
    llm = FiniteMemoryLLM(NoReuseReport(), policy="sliding", max_tokens=512, max_new_tokens=16)
    stats = llm.chat("hello there").stats
    assert stats.reused_tokens is None and stats.reuse_ratio is None
    assert stats.prompt_tokens > 0  # the planner's exact count stands in
    assert stats.prefill_tokens == stats.prompt_tokens
    assert set(stats.estimated) == {"prompt_tokens", "prefill_tokens", "context_tokens"}
    assert json.loads(json.dumps(stats.to_dict()))["reused_tokens"] is None
    assert llm.stats.unreported_reuse_turns == 1
    assert llm.stats.reused_tokens == 0


def test_an_exact_backend_marks_nothing() -> None:
    llm = FiniteMemoryLLM(EchoBackend(), policy="sliding", max_tokens=512, max_new_tokens=16)
    stats = llm.chat("hello there").stats
    assert stats.estimated == () and stats.reused_tokens == 0


def test_ttft_and_latency_count_from_the_same_start() -> None:
    backend = NoReuseReport()
    llm = FiniteMemoryLLM(backend, policy="sliding", max_tokens=512, max_new_tokens=16)
    llm.extend([Message("user", "an earlier message"), Message("assistant", "and its reply")])
    backend.counted = []
    stats = llm.chat("hello there").stats
    # The backend waits 0 ms for its first token, so ttft is the planning before it, which
    # holds at least the planner's counts through the backend (the final budget check).
    planning = sum(backend.planned)
    assert backend.planned and planning > 0
    assert planning <= stats.ttft_ms <= stats.latency_ms
    backend.counted = []
    assert list(llm.stream("and again")) and llm.last_stats is not None
    planning = sum(backend.counted[:1])  # the stream's planning: its final budget check
    assert planning > 0 and planning <= llm.last_stats.ttft_ms <= llm.last_stats.latency_ms


def test_metrics_and_logs_take_unreported_reuse(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.on_turn(TurnStats(prompt_tokens=100, reused_tokens=50, prefill_tokens=50))
    metrics.on_turn(TurnStats(prompt_tokens=300, reused_tokens=None, prefill_tokens=300))
    snap = metrics.snapshot()
    assert snap["reused_tokens"] == 50
    assert snap["unreported_reuse_turns"] == 1
    assert snap["reuse_ratio"] == pytest.approx(0.5)  # over the turns that reported it
    log = JSONLTurnLog(tmp_path / "t.jsonl")
    log.on_turn(TurnStats(reused_tokens=None, estimated=("completion_tokens",)))
    record = json.loads((tmp_path / "t.jsonl").read_text())
    assert record["reused_tokens"] is None
    assert record["estimated"] == ["completion_tokens"]


def test_prometheus_counts_unreported_reuse() -> None:
    pytest.importorskip("prometheus_client", reason="needs the prometheus extra")
    exporter = PrometheusExporter()
    exporter.on_turn(TurnStats(prompt_tokens=100, reused_tokens=40, prefill_tokens=60))
    exporter.on_turn(TurnStats(prompt_tokens=100, reused_tokens=None, prefill_tokens=100))
    value = exporter.registry.get_sample_value
    assert value("fmai_reused_tokens_total") == 40
    assert value("fmai_unreported_reuse_turns_total") == 1


def test_usage_readers_keep_not_reported_apart_from_zero() -> None:
    from types import SimpleNamespace as NS

    from fmai_core.backends import anthropic_messages, openai_chat

    assert openai_chat._read_usage(NS(prompt_tokens=9, completion_tokens=2)) == (9, 2, None)
    details = NS(cached_tokens=0)
    u = NS(prompt_tokens=9, completion_tokens=2, prompt_tokens_details=details)
    assert openai_chat._read_usage(u) == (9, 2, 0)
    assert openai_chat._read_usage(None) == (None, None, None)
    bare = NS(input_tokens=7, output_tokens=1)
    assert anthropic_messages._read_usage(bare)[:2] == (7, None)
    read = NS(input_tokens=7, cache_read_input_tokens=0, cache_creation_input_tokens=0)
    assert anthropic_messages._read_usage(read)[:2] == (7, 0)
