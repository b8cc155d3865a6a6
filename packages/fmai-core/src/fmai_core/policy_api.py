"""The values a memory policy exchanges with the engine: signals, the request, the selection.

A leaf module (it imports only segments), so that the relevance and retrieval helpers the
policies use can depend on these types without depending on the policies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fmai_core.segments import Segment

if TYPE_CHECKING:
    from fmai_core.retrieval import RecallIndex

__all__ = ["EmbedFn", "ImportanceFn", "PolicyRequest", "Selection", "Signals", "SummarizeFn"]

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
    """What a policy sees: `mode`, `candidates` and `budget`, and the rest by keyword.

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
    _: KW_ONLY  # the rest by keyword only
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
        scores: Optional relevance score of kept candidates, by id (in `"recall"` mode:
            what [`TurnTrace.recall_scores`][fmai_core.trace.TurnTrace] reports).
    """

    keep: tuple[int, ...]
    summary: str | None = None
    stats: Mapping[str, Any] = field(default_factory=dict)
    scores: Mapping[int, float] = field(default_factory=dict)
