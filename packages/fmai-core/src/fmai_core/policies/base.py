"""The memory-policy interface.

A policy is a small, pure object: given candidate segments, a token budget, the incoming
user message and optional model signals, it returns which segments to keep (and, for
`rolling_summary`, a new summary). It never mutates anything, so the engine can abandon a
policy that runs past its latency budget and fall back to `sliding` with no side effect.

The engine calls a policy in two modes (see the architecture docs):

- `"evict"`: the append-only history outgrew its share of the budget. `candidates` are the
  history segments; the kept ones (in conversation order) become the new history, sized to
  the low-water mark; the rest move to the archive. A policy may return a `summary`
  replacing the current one; kept tokens plus summary tokens must fit `budget`.
- `"recall"`: every turn, `candidates` are archived segments; the kept ones are placed near
  the end of the prompt, just before the new message. Policies with `recalls = False`
  (`sliding`) are not asked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from fmai_core.policy_api import (
    EmbedFn,
    ImportanceFn,
    PolicyRequest,
    Selection,
    Signals,
    SummarizeFn,
)
from fmai_core.segments import Segment

__all__ = [
    "EmbedFn",
    "ImportanceFn",
    "Policy",
    "PolicyRequest",
    "Selection",
    "Signals",
    "SummarizeFn",
]


class Policy(ABC):
    """Base class of memory policies: subclasses override `select`.

    Attributes:
        name: The registry name (`"sliding"`, `"hybrid"`, ...).
        recalls: Whether the policy is asked to recall archived segments every turn.
    """

    name: ClassVar[str] = "policy"
    recalls: ClassVar[bool] = True

    @abstractmethod
    def select(self, request: PolicyRequest) -> Selection:
        """Choose the segments to keep. Must be pure: no state changes, no I/O but signals."""

    def prepare(self, segments: Sequence[Segment]) -> None:
        """Precompute what later calls need from `segments`, as they enter memory.

        The engine calls it with each turn's new message and reply, and with what `extend`
        adds or `load` restores. It runs outside the policy's deadline, and on a turn its
        time counts in `TurnStats.policy_ms`. Work done here for each text once (features
        kept in memo caches) is not repeated when the segment is later a candidate for
        eviction or recall. The default computes the torch-free proxies' per-text features
        (see [`warm`][fmai_core.relevance.warm]); a policy that needs none overrides it with
        a no-op. It must not change anything but caches.
        """
        from fmai_core.relevance import warm

        warm(s.text for s in segments)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
