"""A hook that exports turn metrics through `prometheus_client` (optional extra)."""

from __future__ import annotations

from typing import Any

from fmai_core.errors import missing_dependency
from fmai_core.stats import TurnStats

__all__ = ["LATENCY_BUCKETS_S", "POLICY_BUCKETS_S", "PrometheusExporter"]

#: Histogram buckets (seconds) for turn latency and time to first token.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
#: Histogram buckets (seconds) for policy time (`max_policy_ms` is typically tens of ms).
POLICY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


class PrometheusExporter:
    """A hook that updates Prometheus metrics after every turn.

    Needs the `prometheus` extra: `pip install 'fmai-core[prometheus]'`. Timings are
    exported in seconds, as Prometheus recommends. With the default namespace `"fmai"` the
    metrics are:

    | metric | type | what |
    | --- | --- | --- |
    | `fmai_turn_latency_seconds` | histogram | wall time of a turn, policy included |
    | `fmai_ttft_seconds` | histogram | time to the first generated token |
    | `fmai_policy_seconds` | histogram | time the memory policy took |
    | `fmai_turns_total` | counter | completed turns |
    | `fmai_prompt_tokens_total` | counter | prompt tokens sent |
    | `fmai_reused_tokens_total` | counter | prompt tokens served from a KV or prompt cache |
    | `fmai_unreported_reuse_turns_total` | counter | turns that did not report their reuse |
    | `fmai_prefill_tokens_total` | counter | prompt tokens computed |
    | `fmai_completion_tokens_total` | counter | tokens generated |
    | `fmai_evictions_total` | counter | turns that evicted a block of history |
    | `fmai_evicted_tokens_total` | counter | tokens moved from the prompt to the archive |
    | `fmai_fallbacks_total` | counter | turns whose policy fell back to `sliding` |
    | `fmai_context_tokens` | gauge | context window in use after the latest turn |

    The cache reuse ratio is `rate(fmai_reused_tokens_total[5m]) /
    rate(fmai_prompt_tokens_total[5m])`.

    Args:
        registry: The `CollectorRegistry` to register in; a new one when `None` (metric
            names are unique per registry: to export several engines in one registry, pass
            the same exporter to each of them).
        namespace: Prefix of every metric name.

    Raises:
        MissingDependencyError: `prometheus_client` is not installed.

    Example:
        ```python
        from prometheus_client import REGISTRY, start_http_server

        exporter = PrometheusExporter(registry=REGISTRY)
        llm = FiniteMemoryLLM(backend, hooks=[exporter])
        start_http_server(9100)
        ```
    """

    def __init__(self, registry: Any = None, *, namespace: str = "fmai") -> None:
        try:
            import prometheus_client as prom  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise missing_dependency("prometheus_client", "prometheus") from exc

        self._prom = prom
        self.registry = prom.CollectorRegistry() if registry is None else registry
        self.namespace = namespace

        def counter(name: str, doc: str) -> Any:
            return prom.Counter(name, doc, namespace=namespace, registry=self.registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return prom.Histogram(
                name, doc, namespace=namespace, registry=self.registry, buckets=buckets
            )

        self.latency = histogram(
            "turn_latency_seconds", "Wall time of a turn, policy included.", LATENCY_BUCKETS_S
        )
        self.ttft = histogram(
            "ttft_seconds", "Time to the first generated token.", LATENCY_BUCKETS_S
        )
        self.policy_time = histogram(
            "policy_seconds", "Time the memory policy took.", POLICY_BUCKETS_S
        )
        self.turns = counter("turns", "Completed turns.")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens sent to the model.")
        self.reused_tokens = counter(
            "reused_tokens", "Prompt tokens served from a KV cache or a hosted prompt cache."
        )
        self.unreported_reuse = counter(
            "unreported_reuse_turns",
            "Turns whose backend did not report how many prompt tokens a cache served.",
        )
        self.prefill_tokens = counter("prefill_tokens", "Prompt tokens computed.")
        self.completion_tokens = counter("completion_tokens", "Tokens generated.")
        self.evictions = counter("evictions", "Turns that evicted a block of history.")
        self.evicted_tokens = counter(
            "evicted_tokens", "Tokens moved from the prompt's history to the archive."
        )
        self.fallbacks = counter("fallbacks", "Turns whose policy fell back to sliding.")
        self.context_tokens = prom.Gauge(
            "context_tokens",
            "Context window in use after the latest turn (prompt plus completion tokens).",
            namespace=namespace,
            registry=self.registry,
        )

    def on_turn(self, stats: TurnStats) -> None:
        """Update every metric from one turn."""
        self.latency.observe(stats.latency_ms / 1000)
        self.ttft.observe(stats.ttft_ms / 1000)
        self.policy_time.observe(stats.policy_ms / 1000)
        self.turns.inc()
        self.prompt_tokens.inc(stats.prompt_tokens)
        if stats.reused_tokens is None:
            self.unreported_reuse.inc()
        else:
            self.reused_tokens.inc(stats.reused_tokens)
        self.prefill_tokens.inc(stats.prefill_tokens)
        self.completion_tokens.inc(stats.completion_tokens)
        self.evicted_tokens.inc(stats.evicted_tokens)
        if stats.evicted:
            self.evictions.inc()
        if stats.fallback:
            self.fallbacks.inc()
        self.context_tokens.set(stats.context_tokens)

    def exposition(self) -> bytes:
        """Return the registry in the Prometheus text format (`generate_latest`)."""
        data: bytes = self._prom.generate_latest(self.registry)
        return data

    def __repr__(self) -> str:
        return f"PrometheusExporter(namespace={self.namespace!r})"
