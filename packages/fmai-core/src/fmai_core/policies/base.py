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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from fmai_core.segments import Segment

if TYPE_CHECKING:
    from fmai_core.retrieval import RecallIndex

__all__ = ["Policy", "PolicyRequest", "Selection", "Signals"]

ImportanceFn = Callable[[Sequence[str], str], list[float]]
EmbedFn = Callable[[Sequence[str]], list[list[float]]]
SummarizeFn = Callable[[str, int], str]


@dataclass(frozen=True)
class Signals:
    """Optional model signals a policy may use.

    Each is `None` when the backend lacks the capability; the policy then uses its
    documented torch-free proxy and says so in its stats (`"signal": "proxy"`).

    Attributes:
        importance: `(texts, query) -> scores`, the attention the model pays to each text.
        embed: `(texts) -> vectors`.
        summarize: `(text, max_tokens) -> summary`, written by the backend.
    """

    importance: ImportanceFn | None = None
    embed: EmbedFn | None = None
    summarize: SummarizeFn | None = None


def _default_count(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class PolicyRequest:
    """What a policy sees.

    Attributes:
        mode: `"evict"` or `"recall"` (see the module docs).
        candidates: Segments to choose from, in conversation order.
        budget: Most tokens the kept segments (plus a new summary, in evict mode) may use.
        query: The incoming user message.
        signals: Optional model signals.
        summary: The current rolling summary, if any (evict mode).
        context: Segments that are in the prompt regardless (pinned items, kept history
            in recall mode); useful to avoid recalling what is already there.
        count_text: Counts the tokens of a text under the active backend.
        turn: The current turn number (0-based).
        index: The conversation's [`RecallIndex`][fmai_core.retrieval.RecallIndex] (kept
            by the engine; `None` when a policy is called on its own).
        deadline: A `time.perf_counter()` value past which the policy should stop (raise
            [`PolicyTimeout`][fmai_core.retrieval.PolicyTimeout], see
            [`check_deadline`][fmai_core.retrieval.check_deadline]); `None`: no deadline.
    """

    mode: Literal["evict", "recall"]
    candidates: tuple[Segment, ...]
    budget: int
    query: str = ""
    signals: Signals = field(default_factory=Signals)
    summary: Segment | None = None
    context: tuple[Segment, ...] = ()
    count_text: Callable[[str], int] = _default_count
    turn: int = 0
    index: RecallIndex | None = None
    deadline: float | None = None


@dataclass(frozen=True)
class Selection:
    """What a policy returns.

    Attributes:
        keep: Ids of the kept candidates (any order; the engine restores conversation order).
        summary: A new summary text replacing the current one, or `None` to keep it as is.
        stats: Free-form figures about the decision, reported in `TurnStats.policy_stats`.
            By convention `"signal"` is `"model"` or `"proxy"`.
    """

    keep: tuple[int, ...]
    summary: str | None = None
    stats: Mapping[str, Any] = field(default_factory=dict)


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
