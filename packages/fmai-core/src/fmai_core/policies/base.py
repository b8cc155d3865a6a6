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
from dataclasses import replace

from fmai_core.policy_api import (
    EmbedFn,
    ImportanceFn,
    PolicyRequest,
    Selection,
    Signals,
    SummarizeFn,
)
from fmai_core.segments import Segment, find_by_id

__all__ = [
    "EmbedFn",
    "ImportanceFn",
    "Policy",
    "PolicyRequest",
    "Selection",
    "Signals",
    "SummarizeFn",
    "enforce_budget",
]


class Policy(ABC):
    """Base class of memory policies: subclasses override `select`.

    A subclass names itself with class attributes (`name: ClassVar[str] = "hybrid"`, and
    `recalls: ClassVar[bool] = False` for one that never recalls); a policy whose name
    depends on its instance (a wrapper, see
    [`WrapperPolicy`][fmai_core.policies.scored.WrapperPolicy]) overrides the properties.

    The budget is a contract the planner enforces for every policy (see
    [`enforce_budget`][fmai_core.policies.base.enforce_budget]): a selection over its
    budget is trimmed, so a policy never needs to re-check another's result.
    """

    @property
    def name(self) -> str:
        """The registry name (`"sliding"`, `"hybrid"`, ...)."""
        return "policy"

    @property
    def recalls(self) -> bool:
        """Whether the policy is asked to recall archived segments every turn."""
        return True

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


def enforce_budget(request: PolicyRequest, selection: Selection) -> Selection:
    """`selection` cut to the contract: known candidates only, within `request.budget`.

    Ids that are not candidates are dropped. Over the budget (kept tokens, plus the new
    summary's in evict mode), evict mode drops the oldest kept segments first and then the
    new summary (the summary first if it alone is over); recall mode drops the last-ranked
    first (`keep` is best first). Stats gain `trimmed`, the number of segments dropped,
    when any was. The planner applies it to every policy's selection, wrappers included.
    """
    tokens = _tokens_of(request.candidates, selection.keep)
    keep = [i for i in dict.fromkeys(selection.keep) if i in tokens]
    summary = selection.summary if request.mode == "evict" else None
    summary_cost = request.count_text(summary) if summary else 0
    used = sum(tokens[i] for i in keep) + summary_cost
    if used <= request.budget and len(keep) == len(selection.keep) and summary == selection.summary:
        return selection
    if summary is not None and summary_cost > request.budget:  # it alone cannot fit
        summary, used = None, used - summary_cost
    dropped = 0
    order = sorted(keep) if request.mode == "evict" else keep[::-1]  # oldest / worst first
    gone: set[int] = set()
    for i in order:
        if used <= request.budget:
            break
        gone.add(i)
        used -= tokens[i]
        dropped += 1
    if used > request.budget and summary is not None:
        summary = None
    stats = dict(selection.stats)
    if dropped:
        stats["trimmed"] = dropped
    return replace(
        selection, keep=tuple(i for i in keep if i not in gone), summary=summary, stats=stats
    )


def _tokens_of(candidates: Sequence[Segment], ids: Sequence[int]) -> dict[int, int]:
    """Token counts of the candidates among `ids`, by id.

    Candidates are in conversation order, so each is found by bisection and the cost is that
    of the selection, not of the candidates (an archive of thousands).
    """
    out = {s.id: s.tokens for s in find_by_id(candidates, ids)}
    if len(out) < len(set(ids)) and any(
        a.id >= b.id for a, b in zip(candidates, candidates[1:])
    ):  # not in conversation order after all (a policy called by hand): look them all up
        wanted = set(ids)
        out = {s.id: s.tokens for s in candidates if s.id in wanted}
    return out
