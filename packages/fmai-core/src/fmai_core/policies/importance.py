"""`importance`: keep what the model attends to, or what carries the most information."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fmai_core.deadline import tick
from fmai_core.policies.base import Policy, PolicyRequest, Selection
from fmai_core.relevance import (
    corpus_index,
    corpus_information,
    greedy_fill,
    newest,
    query_relevance,
    recency,
)
from fmai_core.retrieval import recall

__all__ = ["ImportancePolicy", "importance_scores"]


def _normalise(values: list[float]) -> list[float]:
    top = max(values, default=0.0)
    return [max(0.0, v) / top for v in values] if top > 0 else [0.0] * len(values)


def importance_scores(request: PolicyRequest) -> tuple[list[float], list[float], str]:
    """Score every candidate's importance and its relevance to the query, both in [0, 1].

    With `signals.importance` the importance is the model's score (its attention to each
    segment given the query), normalised by the maximum; without it, the
    [`information`][fmai_core.relevance.information] proxy.

    Returns:
        `(importance, relevance, signal)` where `signal` is `"model"` or `"proxy"`.
    """
    texts = tuple(c.text for c in request.candidates)
    index = corpus_index(texts)
    relevance, _ = query_relevance(request.query, texts, index=index, embed=request.signals.embed)
    scorer = request.signals.importance
    if scorer is not None:
        return _normalise(list(scorer(list(texts), request.query))), relevance, "model"
    return list(corpus_information(texts)), relevance, "proxy"


@dataclass(frozen=True)
class ImportancePolicy(Policy):
    """Keep the segments with the highest importance score.

    In `"evict"` mode the score mixes importance (the model's attention, or the
    information-content proxy when the backend has no scorer), relevance to the incoming
    message and a recency prior; the newest `keep_recent` segments are always kept so the
    conversation keeps its thread. In `"recall"` mode it uses the shared recall
    ([`fmai_core.retrieval`][fmai_core.retrieval]), with `min_relevance` as its threshold.

    Attributes:
        importance_weight: Weight of importance in evict mode.
        query_weight: Weight of relevance to the incoming message in evict mode.
        recency_weight: Weight of the recency prior in evict mode.
        half_life: Recency half-life, in segments.
        keep_recent: Newest segments always kept in evict mode.
        min_relevance: Relevance a segment needs to be recalled.

    Stats: `signal` (`"model"` or `"proxy"`), `kept`, `kept_tokens`, `candidates`.
    """

    name: ClassVar[str] = "importance"

    importance_weight: float = 0.5
    query_weight: float = 0.3
    recency_weight: float = 0.2
    half_life: float = 24.0
    keep_recent: int = 2
    min_relevance: float = 0.15

    def select(self, request: PolicyRequest) -> Selection:
        """Rank candidates by importance and keep the best that fit the budget."""
        if request.mode == "recall":
            return recall(request, min_relevance=self.min_relevance)
        candidates = request.candidates
        if not candidates or request.budget <= 0:
            return Selection(keep=(), stats={"signal": "none", "kept": 0, "kept_tokens": 0})
        importance, relevance, signal = importance_scores(request)
        tick()
        budget = request.budget
        keep: list[int] = []
        prior = recency(len(candidates), self.half_life)
        scores = [
            self.importance_weight * imp + self.query_weight * rel + self.recency_weight * rec
            for imp, rel, rec in zip(importance, relevance, prior)
        ]
        for segment in newest(candidates, self.keep_recent, budget):
            keep.append(segment.id)
            budget -= segment.tokens
        keep += greedy_fill(candidates, scores, budget, taken=keep)
        by_id = {c.id: c.tokens for c in candidates}
        return Selection(
            keep=tuple(keep),
            stats={
                "signal": signal,
                "kept": len(keep),
                "kept_tokens": sum(by_id[i] for i in keep),
                "candidates": len(candidates),
            },
        )
