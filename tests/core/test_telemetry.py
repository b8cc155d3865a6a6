"""Telemetry: hooks, Metrics, JSONLTurnLog and PrometheusExporter."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmai_core.errors import ConfigurationError
from fmai_core.stats import TurnStats
from fmai_core.telemetry import (
    JSONLTurnLog,
    Metrics,
    PrometheusExporter,
    TurnHook,
    call_hooks,
    percentile,
)

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


def reference_percentile(values: list[float], p: int) -> float:
    """Brute force: the smallest value with at least p% of the values at or below it."""
    n = len(values)
    return min(v for v in values if sum(x <= v for x in values) * 100 >= p * n)


def turn(**kw: object) -> TurnStats:
    return TurnStats(**kw)  # type: ignore[arg-type]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )


# -- percentile ----------------------------------------------------------------------------
@given(st.lists(finite, min_size=1, max_size=60), st.integers(min_value=0, max_value=100))
def test_percentile_matches_brute_force(values: list[float], p: int) -> None:
    assert percentile(values, p) == reference_percentile(values, p)


@given(st.lists(finite, min_size=1, max_size=60))
def test_percentile_ends_are_min_and_max(values: list[float]) -> None:
    assert percentile(values, 0) == min(values)
    assert percentile(values, 100) == max(values)


def test_percentile_known_values() -> None:
    data = [15, 20, 35, 40, 50]
    assert [percentile(data, p) for p in (5, 30, 40, 50, 100)] == [15, 20, 20, 35, 50]
    # 95% of 20 samples is exactly rank 19, despite 0.95 * 20 being inexact in binary.
    assert percentile(list(range(1, 21)), 95) == 19


@pytest.mark.parametrize("p", [-1, 100.5])
def test_percentile_rejects_out_of_range(p: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], p)


def test_percentile_rejects_empty() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


# -- Metrics -------------------------------------------------------------------------------
@given(
    st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=50),
    st.integers(min_value=1, max_value=20),
)
def test_metrics_percentiles_cover_the_recent_window(
    timings: list[tuple[float, float, float]], window: int
) -> None:
    metrics = Metrics(window=window)
    for latency, ttft, policy in timings:
        metrics.on_turn(turn(latency_ms=latency, ttft_ms=ttft, policy_ms=policy))
    snap = metrics.snapshot()
    recent = timings[-window:]
    assert snap["turns"] == len(timings)
    assert snap["window"] == len(recent)
    for i, key in enumerate(("latency_ms", "ttft_ms", "policy_ms")):
        values = [t[i] for t in recent]
        for p in (50, 95, 99):
            assert snap[key][f"p{p}"] == reference_percentile(values, p)
        assert snap[key]["max"] == max(values)
        assert snap[key]["mean"] == pytest.approx(sum(values) / len(values))


def test_reuse_ratio_is_token_weighted() -> None:
    metrics = Metrics()
    metrics.on_turn(turn(prompt_tokens=100, reused_tokens=100, prefill_tokens=0))
    metrics.on_turn(turn(prompt_tokens=900, reused_tokens=0, prefill_tokens=900))
    snap = metrics.snapshot()
    # Sum reused / sum prompt, not the mean of per-turn ratios (which would be 0.5).
    assert snap["reuse_ratio"] == pytest.approx(0.1)
    assert snap["prompt_tokens"] == 1000
    assert snap["reused_tokens"] == 100
    assert snap["prefill_tokens"] == 900


def test_counters_evictions_fallbacks_and_policies() -> None:
    metrics = Metrics()
    metrics.on_turn(turn(policy="hybrid", evicted=True, evicted_tokens=120, context_tokens=300))
    metrics.on_turn(turn(policy="sliding", fallback=True, recalled_tokens=7, completion_tokens=5))
    metrics.on_turn(turn(policy="hybrid", evicted=True, evicted_tokens=30, context_tokens=250))
    snap = metrics.snapshot()
    assert snap["evictions"] == 2
    assert snap["evicted_tokens"] == 150
    assert snap["fallbacks"] == 1
    assert snap["recalled_tokens"] == 7
    assert snap["completion_tokens"] == 5
    assert snap["context_tokens"] == 250
    assert snap["policies"] == {"hybrid": 2, "sliding": 1}


def test_empty_snapshot_and_reset() -> None:
    metrics = Metrics()
    empty = metrics.snapshot()
    assert empty["turns"] == 0
    assert empty["reuse_ratio"] == 0.0
    assert empty["latency_ms"] == {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    metrics.on_turn(turn(prompt_tokens=5, latency_ms=1.0, evicted=True))
    metrics.reset()
    assert metrics.snapshot() == empty
    json.dumps(empty)  # JSON-ready


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_metrics_rejects_bad_window(window: object) -> None:
    with pytest.raises(ConfigurationError, match="positive integer"):
        Metrics(window=window)  # type: ignore[arg-type]


def test_metrics_is_thread_safe() -> None:
    metrics = Metrics(window=64)
    threads_n, turns_n = 8, 500

    def work() -> None:
        for _ in range(turns_n):
            metrics.on_turn(turn(prompt_tokens=3, reused_tokens=1, latency_ms=2.0, evicted=True))

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = metrics.snapshot()
    total = threads_n * turns_n
    assert snap["turns"] == total
    assert snap["prompt_tokens"] == 3 * total
    assert snap["reused_tokens"] == total
    assert snap["evictions"] == total
    assert snap["window"] == 64


# -- hooks ---------------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_turn(self, stats: TurnStats) -> None:
        self.seen.append(stats.turn)


class Broken:
    def on_turn(self, stats: TurnStats) -> None:
        raise RuntimeError("hook exploded")


def test_raising_hook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    before, after = Recorder(), Recorder()
    with caplog.at_level(logging.ERROR, logger="fmai"):
        failures = call_hooks([before, Broken(), after], turn(turn=4))
    assert failures == 1
    assert before.seen == [4]
    assert after.seen == [4]  # later hooks still run
    [record] = caplog.records
    assert record.name == "fmai"
    assert record.levelno == logging.ERROR
    assert "turn 4" in record.getMessage()
    assert record.exc_info is not None
    assert "hook exploded" in str(record.exc_info[1])


def test_base_exceptions_are_not_swallowed() -> None:
    class Interrupting:
        def on_turn(self, stats: TurnStats) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call_hooks([Interrupting()], turn())


def test_builtin_hooks_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(Metrics(), TurnHook)
    assert isinstance(JSONLTurnLog(tmp_path / "t.jsonl"), TurnHook)
    assert isinstance(Recorder(), TurnHook)
    assert not isinstance(object(), TurnHook)


# -- JSONL ---------------------------------------------------------------------------------
def test_jsonl_lines_parse_and_carry_every_field(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "nested" / "turns.jsonl"  # parents are created
    log = JSONLTurnLog(path)
    turns = [
        turn(turn=0, prompt_tokens=40, reused_tokens=0, prefill_tokens=40, latency_ms=12.5,
             policy="hybrid", policy_stats={"signal": "proxy"}),
        turn(turn=1, prompt_tokens=55, reused_tokens=38, prefill_tokens=17, evicted=True,
             evicted_tokens=20, fallback=True, policy="sliding", ttft_ms=3.25, policy_ms=0.5),
    ]  # fmt: skip
    for stats in turns:
        log.on_turn(stats)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(turns)
    names = {f.name for f in dataclasses.fields(TurnStats)}
    for line, stats in zip(lines, turns, strict=True):
        record = json.loads(line)
        assert set(record) == names | {"timestamp"}
        for name in names:
            value = getattr(stats, name)
            value = list(value) if isinstance(value, tuple) else value  # JSON has no tuples
            assert record[name] == value, name
        assert datetime.fromisoformat(record["timestamp"]).utcoffset() is not None


def test_jsonl_appends_and_is_flushed_per_line(tmp_path: Path) -> None:
    path = tmp_path / "turns.jsonl"
    JSONLTurnLog(path).on_turn(turn(turn=0))
    second = JSONLTurnLog(path)
    second.on_turn(turn(turn=1))
    # Readable right away, without closing anything.
    assert [json.loads(x)["turn"] for x in path.read_text().splitlines()] == [0, 1]


def test_jsonl_writes_unserialisable_policy_stats_as_text(tmp_path: Path) -> None:
    path = tmp_path / "turns.jsonl"
    JSONLTurnLog(path).on_turn(turn(policy_stats={"where": Path("a/b"), "n": 2}))
    record = json.loads(path.read_text())
    assert record["policy_stats"] == {"where": str(Path("a/b")), "n": 2}


# -- Prometheus ----------------------------------------------------------------------------
PROM_NAMES = [
    "fmai_turn_latency_seconds",
    "fmai_ttft_seconds",
    "fmai_policy_seconds",
    "fmai_turns_total",
    "fmai_prompt_tokens_total",
    "fmai_reused_tokens_total",
    "fmai_prefill_tokens_total",
    "fmai_completion_tokens_total",
    "fmai_evictions_total",
    "fmai_evicted_tokens_total",
    "fmai_fallbacks_total",
    "fmai_context_tokens",
]


def test_prometheus_exposition() -> None:
    pytest.importorskip("prometheus_client", reason="needs the prometheus extra: prometheus-client")
    exporter = PrometheusExporter()
    first = turn(
        prompt_tokens=100,
        reused_tokens=60,
        prefill_tokens=40,
        completion_tokens=8,
        context_tokens=108,
        latency_ms=250.0,
        ttft_ms=40.0,
        policy_ms=2.0,
        evicted=True,
        evicted_tokens=30,
    )
    exporter.on_turn(first)
    exporter.on_turn(turn(prompt_tokens=50, prefill_tokens=50, context_tokens=70, fallback=True))
    text = exporter.exposition().decode()
    for name in PROM_NAMES:
        assert f"# TYPE {name} " in text, name
    value = exporter.registry.get_sample_value
    assert value("fmai_turns_total") == 2
    assert value("fmai_prompt_tokens_total") == 150
    assert value("fmai_reused_tokens_total") == 60
    assert value("fmai_prefill_tokens_total") == 90
    assert value("fmai_completion_tokens_total") == 8
    assert value("fmai_evictions_total") == 1
    assert value("fmai_evicted_tokens_total") == 30
    assert value("fmai_fallbacks_total") == 1
    assert value("fmai_context_tokens") == 70
    assert value("fmai_turn_latency_seconds_count") == 2
    assert value("fmai_turn_latency_seconds_sum") == pytest.approx(0.25)
    assert value("fmai_ttft_seconds_bucket", {"le": "0.05"}) == 2


def test_prometheus_given_registry_and_namespace() -> None:
    prom = pytest.importorskip(
        "prometheus_client", reason="needs the prometheus extra: prometheus-client"
    )
    registry = prom.CollectorRegistry()
    a = PrometheusExporter(registry, namespace="chat_a")
    PrometheusExporter(registry, namespace="chat_b")  # distinct names share one registry
    a.on_turn(turn(prompt_tokens=7))
    assert a.registry is registry
    assert registry.get_sample_value("chat_a_prompt_tokens_total") == 7
    assert registry.get_sample_value("chat_b_prompt_tokens_total") == 0
    # A new exporter without a registry never touches the global default registry.
    PrometheusExporter()
    assert prom.REGISTRY.get_sample_value("fmai_turns_total") is None


def test_prometheus_missing_raises_missing_dependency_error() -> None:
    # A fresh interpreter in which prometheus_client cannot be imported.
    code = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None\n"
        "from fmai_core.errors import MissingDependencyError\n"
        "from fmai_core.telemetry import PrometheusExporter\n"
        "try:\n"
        "    PrometheusExporter()\n"
        "except MissingDependencyError as exc:\n"
        "    print('MISSING', exc)\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "MISSING" in proc.stdout
    assert "pip install 'fmai-core[prometheus]'" in proc.stdout


def test_importing_telemetry_loads_no_prometheus_client() -> None:
    code = (
        "import sys\n"
        "import fmai_core.telemetry\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prometheus_client'))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- with the engine -----------------------------------------------------------------------
def test_engine_feeds_hooks_and_survives_a_broken_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fmai_core import FiniteMemoryLLM
    from fmai_core.testing import EchoBackend

    metrics, recorder = Metrics(), Recorder()
    path = tmp_path / "turns.jsonl"
    llm = FiniteMemoryLLM(
        EchoBackend(prompt_cache=True),
        policy="sliding",
        max_tokens=96,
        max_new_tokens=16,
        hooks=[metrics, Broken(), recorder, JSONLTurnLog(path)],
    )
    texts = ["I live in Lyon.", "I have two cats.", "I play the cello.", "Where do I live?"]
    results = []
    with caplog.at_level(logging.ERROR, logger="fmai"):
        for text in texts:
            results.append(llm.chat(text))
    assert [r.response for r in results] == [f"echo: {t}" for t in texts]
    assert recorder.seen == [0, 1, 2, 3]
    assert sum("hook exploded" in str(r.exc_info[1]) for r in caplog.records if r.exc_info) == 4
    snap = metrics.snapshot()
    total = llm.stats
    assert snap["turns"] == total.turns == 4
    assert snap["prompt_tokens"] == total.prompt_tokens
    assert snap["reused_tokens"] == total.reused_tokens
    assert snap["reuse_ratio"] == pytest.approx(total.reuse_ratio)
    assert snap["evictions"] == total.evictions
    assert snap["evicted_tokens"] == total.evicted_tokens
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["prompt_tokens"] for x in lines] == [r.stats.prompt_tokens for r in results]
