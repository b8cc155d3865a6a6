"""Per-turn and cumulative statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MemoryStats", "TurnStats"]


@dataclass(frozen=True)
class TurnStats:
    """Figures for one turn.

    Attributes:
        turn: Turn number (0-based).
        prompt_tokens: Tokens in the prompt sent to the model (exact, template included).
        reused_tokens: Prompt tokens served from a KV cache or a hosted prompt cache; `None`
            when the backend did not report it (a server that sends no cached-token count,
            or a stream without usage), which is not the same as 0 (nothing was reused).
        prefill_tokens: Prompt tokens computed this turn (all of them, and marked estimated,
            when `reused_tokens` is `None`).
        completion_tokens: Tokens generated.
        context_tokens: Prompt tokens plus completion tokens: the context window in use.
        evicted_tokens: Tokens moved from the prompt's history to the archive this turn.
        recalled_tokens: Tokens of archived segments recalled into the prompt this turn.
        summary_tokens: Tokens of the rolling summary in the prompt.
        latency_ms: Wall time of the turn, from the moment the turn starts (before planning)
            to its commit: planning, the policy, the backend call and the commit.
        ttft_ms: Time to the first generated token, from the same start as `latency_ms`
            (planning included; for a call that does not stream it equals the backend's
            whole call plus planning). `policy_ms` is the policy's share of it.
        policy: The policy that decided (`"sliding"` after a fallback).
        policy_ms: Time the policy took: its calls (evict and recall) and its
            [`prepare`][fmai_core.policies.Policy.prepare] of the turn's message and reply.
        fallback: `True` when the policy ran past `max_policy_ms` and `sliding` was used.
        evicted: `True` when a block eviction happened this turn.
        policy_stats: Free-form figures from the policy (e.g. `{"signal": "proxy"}`).
        estimated: The names of the token fields that are fmai's estimates rather than the
            backend's report (e.g. `("prompt_tokens", "completion_tokens",
            "prefill_tokens", "context_tokens")` for a stream whose server sent no usage).
            Empty when every figure was reported or counted exactly.
        kv: What the backend's KV cache did this turn, when it says (`HFBackend`:
            `mode`, `applied`, `cut_tokens`, `rotated_tokens`, `fallback`; see the KV cache
            page). Empty for backends that do not report it.
    """

    turn: int = 0
    prompt_tokens: int = 0
    reused_tokens: int | None = 0
    prefill_tokens: int = 0
    completion_tokens: int = 0
    context_tokens: int = 0
    evicted_tokens: int = 0
    recalled_tokens: int = 0
    summary_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    policy: str = ""
    policy_ms: float = 0.0
    fallback: bool = False
    evicted: bool = False
    policy_stats: dict[str, Any] = field(default_factory=dict)
    estimated: tuple[str, ...] = ()
    kv: dict[str, Any] = field(default_factory=dict)

    @property
    def reuse_ratio(self) -> float | None:
        """Share of prompt tokens served from a cache (0 when the prompt is empty; `None`
        when the reuse was not reported)."""
        if self.reused_tokens is None:
            return None
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping of every field (`estimated` as a list)."""
        data = asdict(self)
        data["estimated"] = list(self.estimated)
        return data


@dataclass
class MemoryStats:
    """Cumulative figures over a conversation (see `FiniteMemoryLLM.stats`).

    Attributes:
        turns: Turns completed.
        messages: Messages in the record (the archive included).
        segments: Segments in the record.
        prompt_segments: Segments in the current history (in the prompt).
        archived_segments: Segments in the archive.
        prompt_tokens: Sum over turns.
        reused_tokens: Sum over the turns that reported it.
        prefill_tokens: Sum over turns.
        completion_tokens: Sum over turns.
        evicted_tokens: Sum over turns.
        evictions: Turns that evicted a block.
        fallbacks: Turns whose policy fell back to `sliding`.
        unreported_reuse_turns: Turns whose backend did not report its cache reuse
            (`TurnStats.reused_tokens is None`); they add nothing to `reused_tokens`.
    """

    turns: int = 0
    messages: int = 0
    segments: int = 0
    prompt_segments: int = 0
    archived_segments: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefill_tokens: int = 0
    completion_tokens: int = 0
    evicted_tokens: int = 0
    evictions: int = 0
    fallbacks: int = 0
    unreported_reuse_turns: int = 0

    @property
    def reuse_ratio(self) -> float:
        """Share of all prompt tokens served from a cache (turns that did not report their
        reuse count as 0; see `unreported_reuse_turns`)."""
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        data = asdict(self)
        data["reuse_ratio"] = self.reuse_ratio
        return data
