"""Ranking messages for a query: BM25 and embeddings fused, with a second pass."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from fmai_core.policy_api import EmbedFn
from fmai_core.relevance.lexical import terms
from fmai_core.retrieval.index import RecallIndex

__all__ = ["RRF_K", "Retrieval", "fuse", "recall_need", "retrieve"]

RRF_K = 60.0
# Fusion weights: first-pass BM25 and cosine count fully, the second pass at half weight.
WEIGHTS = {"bm25": 1.0, "cosine": 1.0, "bm25+": 0.5, "cosine+": 0.5}
# Terms the second pass adds, from the best hits of the first.
EXPANSION_TERMS = 6
# Ranks fused per list: beyond them a list's vote (1 / (60 + rank)) no longer matters.
FUSION_DEPTH = 300
SEEDS = 3


@dataclass(frozen=True)
class Retrieval:
    """The ranking of messages for one query.

    Attributes:
        fused: Fused score by message id (higher is better), for the matching messages.
        relevance: An absolute relevance in [0, 1] by message id (normalised BM25, or the
            cosine when it is higher); the recall threshold applies to it.
        expansion: Terms the second pass added to the query.
        signal: `"model"` when embeddings took part, else `"proxy"`.
    """

    fused: Mapping[int, float]
    relevance: Mapping[int, float]
    expansion: tuple[str, ...]
    signal: str

    def best(self, min_relevance: float) -> list[int]:
        """Message ids that pass `min_relevance`, best first."""
        rel = self.relevance
        ranked = sorted(self.fused, key=lambda m: (-self.fused[m], -m))
        return [m for m in ranked if rel.get(m, 0.0) > min_relevance]


def fuse(
    lists: Mapping[str, Mapping[int, float]],
    weights: Mapping[str, float] | None = None,
    depth: int = FUSION_DEPTH,
) -> dict[int, float]:
    """Weighted reciprocal-rank fusion: each list adds `weight / (RRF_K + rank)`.

    Only the best `depth` of each list take part (ties go to the newer message).
    `weights` default to `WEIGHTS`.
    """
    fused: dict[int, float] = {}
    for name, scores in lists.items():
        weight = (weights or WEIGHTS)[name]
        order = heapq.nlargest(depth, scores.items(), key=_score_then_id)
        for rank, (m, _) in enumerate(order, 1):
            fused[m] = fused.get(m, 0.0) + weight / (RRF_K + rank)
    return fused


def _score_then_id(item: tuple[int, float]) -> tuple[float, int]:
    return item[1], item[0]


def retrieve(
    index: RecallIndex,
    query: str,
    among: Collection[int] | None = None,
    *,
    embed: EmbedFn | None = None,
    min_relevance: float = 0.15,
    second_pass: bool = True,
    tick: Callable[[], None] = lambda: None,
) -> Retrieval:
    """Rank the messages (of `among`, or all indexed) for `query`.

    See [`fmai_core.retrieval`][fmai_core.retrieval] for the method.
    """
    q_terms = terms(query)
    q = dict.fromkeys(q_terms, 1.0)
    mass = index.mass(q)
    lexical = index.bm25(q, among) if mass > 0 else {}
    relevance = {m: min(1.0, s / mass) for m, s in lexical.items()}
    lists: dict[str, Mapping[int, float]] = {"bm25": lexical}
    qv: Sequence[float] | None = None
    if embed is not None and index.vectors():
        qv = index.query_vector(query, embed)
        cos = {m: c for m, c in index.cosines(qv, among).items() if c > 0.0}
        lists["cosine"] = cos
        for m, c in cos.items():
            if c > relevance.get(m, 0.0):
                relevance[m] = c
    tick()
    weights = dict(WEIGHTS)
    if qv is not None:
        # How sure each signal is for this query: the share of the query's information the
        # best lexical match holds, against the best cosine. A question worded like its
        # evidence trusts BM25; a paraphrase (its words only in other turns) the embedding.
        lex_best = max(relevance.get(m, 0.0) for m in lexical) if lexical else 0.0
        lex_best = min(lex_best, max((min(1.0, s / mass) for s in lexical.values()), default=0))
        cos_best = max(lists["cosine"].values(), default=0.0)
        total = lex_best + cos_best
        if total > 0:
            weights["bm25"] = 2.0 * lex_best / total
            weights["cosine"] = 2.0 * cos_best / total
            weights["bm25+"] = 0.5 * weights["bm25"]
            weights["cosine+"] = 0.5 * weights["cosine"]
    fused = fuse(lists, weights)
    expansion: tuple[str, ...] = ()
    if second_pass and fused:
        ranked = sorted(fused, key=lambda m: (-fused[m], -m))
        seeds = [m for m in ranked if relevance[m] > min_relevance][:SEEDS]
        if seeds:
            expansion = tuple(index.top_terms(seeds, set(q_terms), EXPANSION_TERMS))
            grown = dict.fromkeys(expansion, 0.5)
            mass2 = index.mass(grown)
            if mass2 > 0:
                added = index.bm25(grown, among)
                # BM25 adds up over terms: the grown query's score is the first pass's plus
                # the added terms'.
                lists["bm25+"] = {
                    m: lexical.get(m, 0.0) + added.get(m, 0.0) for m in lexical.keys() | added
                }
                # A second-pass hit counts as relevant by the share of the added terms it
                # matches, at half weight: reached through a hit, it is less sure than one.
                for m, s in added.items():
                    r = 0.5 * min(1.0, s / mass2)
                    if r > relevance.get(m, 0.0):
                        relevance[m] = r
            if qv is not None:
                vecs = index.vectors()
                rows = [vecs[m] for m in seeds if m in vecs]
                if rows:
                    mean = [sum(col) / len(rows) for col in zip(*rows)]
                    moved = [a + 0.5 * b for a, b in zip(qv, mean)]
                    lists["cosine+"] = {
                        m: c for m, c in index.cosines(moved, among).items() if c > 0.0
                    }
            tick()
            fused = fuse(lists, weights)
    return Retrieval(fused, relevance, expansion, "model" if qv is not None else "proxy")


def recall_need(
    index: RecallIndex,
    query: str,
    recent: Collection[int],
    *,
    embed: EmbedFn | None = None,
    min_relevance: float = 0.15,
    top: int = 8,
) -> float:
    """How much of the question's evidence lies outside the `recent` messages, in [0, 1].

    Every indexed message is ranked for the query (one pass); of the `top` best that pass
    the recall threshold, the share of fused score held by messages not in `recent` is the
    answer. A follow-up about what was just said scores near 0, a question about the
    distant past near 1; a query that matches nothing scores 0.
    """
    found = retrieve(
        index, query, None, embed=embed, min_relevance=min_relevance, second_pass=False
    )
    best = found.best(min_relevance)[:top]
    if not best:
        return 0.0
    total = sum(found.fused[m] for m in best)
    return sum(found.fused[m] for m in best if m not in recent) / total
