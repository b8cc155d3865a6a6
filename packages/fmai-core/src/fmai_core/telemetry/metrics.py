"""In-process metrics: latency percentiles, cache reuse, evictions and fallbacks."""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from fmai_core.errors import ConfigurationError
from fmai_core.stats import TurnStats

__all__ = ["Metrics", "percentile"]

PERCENTILES: tuple[int, ...] = (50, 95, 99)
_TIMINGS: tuple[str, ...] = ("latency_ms", "ttft_ms", "policy_ms")


def percentile(values: Sequence[float], p: float) -> float:
    """Return the `p`-th percentile of `values` by the nearest-rank method.

    The result is the smallest value such that at least `p`% of the values are less than
    or equal to it: with the values sorted, the one at rank `ceil(p / 100 * n)` (1-based;
    rank 1 for `p = 0`). It is always one of the observed values, never an interpolation.

    Args:
        values: The samples, in any order (not modified).
        p: The percentile, from 0 to 100.

    Raises:
        ValueError: `values` is empty or `p` is outside `[0, 100]`.

    Examples:
        >>> percentile([15, 20, 35, 40, 50], 40)
        20
    """
    if not 0 <= p <= 100:
        raise ValueError(f"A percentile must be between 0 and 100, got {p}.")
    n = len(values)
    if n == 0:
        raise ValueError("Cannot take a percentile of no values: record some turns first.")
    # round() absorbs float noise such as 0.95 * 20 = 18.999999999999996.
    rank = max(1, math.ceil(round(p * n / 100, 9)))
    return sorted(values)[rank - 1]


class Metrics:
    """A hook that aggregates turns into counters and latency percentiles.

    Counters (turns, tokens, evictions, fallbacks) cover every turn seen. Percentiles cover
    the most recent `window` turns only, so memory stays bounded however long the process
    runs. Percentiles use the nearest-rank method (see
    [`percentile`][fmai_core.telemetry.percentile]). All methods are thread-safe, so one
    instance may be shared by several engines.

    Args:
        window: How many recent samples of each timing to keep for percentiles.

    Raises:
        ConfigurationError: `window` is less than 1.

    Example:
        ```python
        metrics = Metrics(window=500)
        llm = FiniteMemoryLLM(backend, hooks=[metrics])
        ...
        snap = metrics.snapshot()
        print(snap["latency_ms"]["p95"], snap["reuse_ratio"])
        ```
    """

    def __init__(self, window: int = 1024) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigurationError(
                f"Metrics(window=...) must be a positive integer, got {window!r}."
            )
        self.window = window
        self._lock = threading.Lock()
        self._samples: dict[str, deque[float]] = {k: deque(maxlen=window) for k in _TIMINGS}
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._turns = 0
        self._prompt = 0
        self._reused = 0
        self._reuse_prompt = 0  # prompt tokens of the turns that reported their reuse
        self._unreported = 0
        self._prefill = 0
        self._completion = 0
        self._evictions = 0
        self._evicted_tokens = 0
        self._recalled_tokens = 0
        self._fallbacks = 0
        self._context_tokens = 0
        self._policies: Counter[str] = Counter()

    def on_turn(self, stats: TurnStats) -> None:
        """Record one turn."""
        with self._lock:
            self._turns += 1
            self._prompt += stats.prompt_tokens
            if stats.reused_tokens is None:
                self._unreported += 1
            else:
                self._reused += stats.reused_tokens
                self._reuse_prompt += stats.prompt_tokens
            self._prefill += stats.prefill_tokens
            self._completion += stats.completion_tokens
            self._evictions += int(stats.evicted)
            self._evicted_tokens += stats.evicted_tokens
            self._recalled_tokens += stats.recalled_tokens
            self._fallbacks += int(stats.fallback)
            self._context_tokens = stats.context_tokens
            self._policies[stats.policy] += 1
            for key in _TIMINGS:
                self._samples[key].append(float(getattr(stats, key)))

    def reset(self) -> None:
        """Forget every turn recorded so far."""
        with self._lock:
            self._reset_counters()
            for samples in self._samples.values():
                samples.clear()

    def snapshot(self) -> dict[str, Any]:
        """Return the current figures as a JSON-ready dict.

        Keys: `turns`, `prompt_tokens`, `reused_tokens`, `prefill_tokens`,
        `completion_tokens`, `reuse_ratio` (reused / prompt tokens over the turns that
        reported their reuse, 0 when none did), `unreported_reuse_turns` (turns whose
        backend did not report it: `TurnStats.reused_tokens is None`), `evictions` (turns
        that evicted a block), `evicted_tokens`, `recalled_tokens`, `fallbacks`,
        `context_tokens` (of the latest turn), `policies` (turns per deciding policy),
        `window` (samples the percentiles cover) and, for each of `latency_ms`, `ttft_ms`
        and `policy_ms`, a dict with `p50`, `p95`, `p99`, `mean` and `max` (all `None`
        before the first turn).
        """
        with self._lock:
            samples = {k: list(v) for k, v in self._samples.items()}
            snap: dict[str, Any] = {
                "turns": self._turns,
                "prompt_tokens": self._prompt,
                "reused_tokens": self._reused,
                "prefill_tokens": self._prefill,
                "completion_tokens": self._completion,
                "reuse_ratio": self._reused / self._reuse_prompt if self._reuse_prompt else 0.0,
                "unreported_reuse_turns": self._unreported,
                "evictions": self._evictions,
                "evicted_tokens": self._evicted_tokens,
                "recalled_tokens": self._recalled_tokens,
                "fallbacks": self._fallbacks,
                "context_tokens": self._context_tokens,
                "policies": dict(self._policies),
            }
        snap["window"] = len(samples["latency_ms"])
        for key, values in samples.items():
            snap[key] = _summary(values)
        return snap

    def __repr__(self) -> str:
        return f"Metrics(window={self.window}, turns={self._turns})"


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {**{f"p{p}": None for p in PERCENTILES}, "mean": None, "max": None}
    out: dict[str, float | None] = {f"p{p}": percentile(values, p) for p in PERCENTILES}
    out["mean"] = sum(values) / len(values)
    out["max"] = max(values)
    return out
