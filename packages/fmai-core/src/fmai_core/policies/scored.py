"""Shared bases of the built-in policies: recalling, scored (kvpress-style) and wrappers.

- [`RecallingPolicy`][fmai_core.policies.scored.RecallingPolicy] holds the guards every
  recalling policy repeats: recall mode goes to the shared recall
  ([`fmai_core.retrieval.recall`][fmai_core.retrieval.recall]) with the policy's
  `min_relevance`, and an empty request returns an empty selection. A subclass writes
  `evict`.
- [`ScoredPolicy`][fmai_core.policies.scored.ScoredPolicy] adds the eviction prologue: the
  newest `keep_recent` segments are always kept, then a subclass scores the candidates
  (`score`, as a kvpress press overrides `score`) and chooses within what is left
  (`choose`; greedy by score by default), or replaces both (`fill`).
- [`WrapperPolicy`][fmai_core.policies.scored.WrapperPolicy] delegates to a base policy and
  adds to it. The planner enforces the budget for every policy
  ([`enforce_budget`][fmai_core.policies.base.enforce_budget]), so a wrapper never re-trims.

Example:
    ```python
    from dataclasses import dataclass
    from typing import ClassVar

    from fmai_core.policies.scored import ScoredPolicy


    @dataclass(frozen=True)
    class LongestFirst(ScoredPolicy):
        name: ClassVar[str] = "longest"

        def score(self, request):
            return [float(c.tokens) for c in request.candidates], "proxy"
    ```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fmai_core.deadline import tick
from fmai_core.policies.base import Policy, PolicyRequest, Selection
from fmai_core.segments import Segment

__all__ = ["RecallingPolicy", "ScoredPolicy", "WrapperPolicy"]


class RecallingPolicy(Policy):
    """A policy that recalls through the shared recall and evicts by `evict`.

    A subclass (a frozen dataclass) declares `min_relevance`, the relevance a segment needs
    to be recalled (0.15 in the built-ins), and overrides `evict`.
    """

    min_relevance: float = 0.15

    def select(self, request: PolicyRequest) -> Selection:
        """Recall mode: the shared recall; evict mode: `evict` (nothing for an empty request)."""
        if request.mode == "recall":
            return self.recall(request)
        if not request.candidates or request.budget <= 0:
            return Selection(keep=(), stats={"signal": "none", "kept": 0, "kept_tokens": 0})
        return self.evict(request)

    def recall(self, request: PolicyRequest) -> Selection:
        """Archived messages relevant to the query (see `fmai_core.retrieval.recall`)."""
        from fmai_core.retrieval import recall

        return recall(request, min_relevance=self.min_relevance)

    def evict(self, request: PolicyRequest) -> Selection:
        """Choose the history to keep; `request` has candidates and a positive budget."""
        raise NotImplementedError(f"{type(self).__name__} must override evict (or select)")


class ScoredPolicy(RecallingPolicy):
    """A recalling policy that keeps the newest `keep_recent` segments, then the best scored.

    A subclass declares `keep_recent` (2 in the built-ins) and overrides `score`; `choose`
    (greedy by score, newer first on ties) and `fill` (score, then choose) may be overridden
    too. Stats: `signal`, `candidates`, `value` (total score kept), `kept`, `kept_tokens`,
    plus whatever `fill` adds.
    """

    keep_recent: int = 2

    def evict(self, request: PolicyRequest) -> Selection:
        """Keep the newest `keep_recent` segments, then what `fill` chooses in the rest."""
        from fmai_core.relevance import newest

        candidates = request.candidates
        reserved = [s.id for s in newest(candidates, self.keep_recent, request.budget)]
        tokens = {c.id: c.tokens for c in candidates}
        budget = request.budget - sum(tokens[i] for i in reserved)
        chosen, stats = self.fill(request, frozenset(reserved), budget)
        keep = (*reserved, *chosen)
        kept = {"kept": len(keep), "kept_tokens": sum(tokens[i] for i in keep)}
        return Selection(keep=keep, stats={**stats, **kept})

    def fill(
        self, request: PolicyRequest, reserved: frozenset[int], budget: int
    ) -> tuple[list[int], dict[str, Any]]:
        """Ids to keep besides `reserved`, within `budget` tokens, and the stats to report."""
        values, signal = self.score(request)
        tick()
        candidates = request.candidates
        chosen = self.choose(candidates, values, budget, reserved)
        kept = reserved.union(chosen)
        value = sum(v for c, v in zip(candidates, values) if c.id in kept)
        return chosen, {"signal": signal, "candidates": len(candidates), "value": round(value, 4)}

    def score(self, request: PolicyRequest) -> tuple[list[float], str]:
        """One score per candidate (higher is kept first), and `"model"` or `"proxy"`."""
        raise NotImplementedError(f"{type(self).__name__} must override score (or fill)")

    def choose(
        self,
        candidates: Sequence[Segment],
        values: Sequence[float],
        budget: int,
        reserved: frozenset[int],
    ) -> list[int]:
        """Ids of the candidates to add to `reserved` within `budget`: greedy by value."""
        from fmai_core.relevance import greedy_fill

        return greedy_fill(candidates, values, budget, taken=reserved)


class WrapperPolicy(Policy):
    """A policy that delegates to a base policy and adds to what it does.

    Its name is `prefix + base.name` (register that name, so checkpoints restore it), it
    recalls when its base does, and `prepare` and `select` go to the base; a subclass
    overrides `select` (calling `super().select`) or `wrap` to add to the selection. The
    planner enforces the budget on the result, so a wrapper does not trim.

    Args:
        base: The policy that chooses segments: a registered name or a `Policy` instance.

    Raises:
        UnknownPolicyError: `base` is not a registered policy name.
    """

    #: The start of the wrapper's registered names (`"multilingual:"`).
    prefix: str = "wrapped:"

    def __init__(self, base: str | Policy = "hybrid") -> None:
        from fmai_core.policies import get_policy

        self.base = get_policy(base)

    @property
    def name(self) -> str:
        """`prefix + base.name`."""
        return f"{self.prefix}{self.base.name}"

    @property
    def recalls(self) -> bool:
        """Whether the base policy recalls archived segments."""
        return self.base.recalls

    def prepare(self, segments: Sequence[Segment]) -> None:
        """Let the base policy precompute what it needs from segments entering memory."""
        self.base.prepare(segments)

    def select(self, request: PolicyRequest) -> Selection:
        """The base policy's selection, passed through `wrap`."""
        return self.wrap(request, self.base.select(request))

    def wrap(self, request: PolicyRequest, selection: Selection) -> Selection:
        """Add to the base's selection (the default adds `base` to the stats)."""
        return Selection(
            keep=selection.keep,
            summary=selection.summary,
            stats={**selection.stats, "base": self.base.name},
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={self.base.name!r})"
