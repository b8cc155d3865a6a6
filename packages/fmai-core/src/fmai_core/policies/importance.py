"""`importance`: keep what the model attends to, or what carries the most information."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fmai_core.policies.base import PolicyRequest
from fmai_core.policies.scored import ScoredPolicy
from fmai_core.relevance import corpus_index, corpus_information, query_relevance, recency

__all__ = ["ImportancePolicy", "importance_scores", "mixed_scores"]


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


def mixed_scores(
    request: PolicyRequest, weights: tuple[float, float, float], half_life: float
) -> tuple[list[float], str]:
    """`importance * w[0] + relevance * w[1] + recency * w[2]` for every candidate.

    The parts are [`importance_scores`][fmai_core.policies.importance.importance_scores]
    and a recency prior of `half_life` segments. Returns the scores and the signal.
    """
    importance, relevance, signal = importance_scores(request)
    prior = recency(len(request.candidates), half_life)
    wi, wq, wr = weights
    return [wi * i + wq * q + wr * r for i, q, r in zip(importance, relevance, prior)], signal


@dataclass(frozen=True)
class ImportancePolicy(ScoredPolicy):
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

    Stats: `signal` (`"model"` or `"proxy"`), `candidates`, `value`, `kept`, `kept_tokens`
    (see [`ScoredPolicy`][fmai_core.policies.scored.ScoredPolicy]).
    """

    name: ClassVar[str] = "importance"

    importance_weight: float = 0.5
    query_weight: float = 0.3
    recency_weight: float = 0.2
    half_life: float = 24.0
    keep_recent: int = 2
    min_relevance: float = 0.15

    def score(self, request: PolicyRequest) -> tuple[list[float], str]:
        """Importance, relevance to the query and recency, mixed by the weights."""
        weights = (self.importance_weight, self.query_weight, self.recency_weight)
        return mixed_scores(request, weights, self.half_life)
