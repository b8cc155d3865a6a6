"""Ranking messages for a query: BM25 and embeddings fused, with a second pass."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from fmai_core.policy_api import EmbedFn
from fmai_core.relevance.lexical import terms
from fmai_core.retrieval.index import QUERY_TERMS, RecallIndex

__all__ = ["Retrieval", "fuse", "recall_need", "retrieve"]

# Fusion weights: first-pass BM25 and cosine count fully, the second pass at half weight.
WEIGHTS = {"bm25": 1.0, "cosine": 1.0, "bm25+": 0.5, "cosine+": 0.5}
# The second pass: the best first-pass hits it follows (seeds), the entity terms it takes
# from each, and the seeds the embedding query moves toward. A seed bridges in proportion
# to its score, so a weak one adds little; 16 seeds (was 5) reach a first hop that decoys
# on the question's topic outrank (recall benchmark, torch-free multi-hop at 10%: 37.9% ->
# 42.1%; with MiniLM unchanged within 0.2 points).
SEEDS = 16
BRIDGE_TERMS = 3
MEAN_SEEDS = 3


@dataclass(frozen=True)
class Retrieval:
    """The ranking of messages for one query.

    Attributes:
        fused: Fused score by message id (higher is better), for the matching messages.
        relevance: An absolute relevance in [0, 1] by message id (normalised BM25, or the
            cosine when it is higher); the recall threshold applies to it.
        expansion: Terms the second pass added to the query.
        signal: `"model"` when embeddings took part, else `"proxy"`.
        carried: Messages the second pass reached through a hit that passed the threshold
            (they share its rare names): they come back through it, as a partner turn does,
            whatever their own relevance.
    """

    fused: Mapping[int, float]
    relevance: Mapping[int, float]
    expansion: tuple[str, ...]
    signal: str
    carried: frozenset[int] = frozenset()

    def best(self, min_relevance: float) -> list[int]:
        """Message ids that pass `min_relevance` (or are carried by one that does), best
        first."""
        get, carried = self.relevance.get, self.carried
        # (score, id) pairs sorted in C, best first: the order of the key (-score, -id)
        passing = [
            (x, m) for m, x in self.fused.items() if get(m, 0.0) > min_relevance or m in carried
        ]
        passing.sort(reverse=True)
        return [m for _, m in passing]


def fuse(
    lists: Mapping[str, Mapping[int, float]], weights: Mapping[str, float] | None = None
) -> dict[int, float]:
    """Score fusion: the weighted sum of each list's normalised scores (CombSUM).

    Each list's scores must already be on a common [0, 1] scale (see `retrieve`); a message
    missing from a list scores 0 there. `weights` default to `WEIGHTS`.

    Example:
        >>> fuse({"bm25": {1: 1.0, 2: 0.2}, "cosine": {2: 1.0, 3: 0.5}})
        {1: 1.0, 2: 1.2, 3: 0.5}
    """
    fused: dict[int, float] = {}
    for name, scores in lists.items():
        weight = (weights or WEIGHTS)[name]
        if not fused:  # the first list: a copy, scaled (0.0 + w * x is w * x)
            fused = {m: weight * x for m, x in scores.items()}
            continue
        get = fused.get
        for m, x in scores.items():
            fused[m] = get(m, 0.0) + weight * x
    return fused


def _minmax(scores: Mapping[int, float]) -> dict[int, float]:
    """Scores mapped onto [0, 1] by the list's own range (its best is 1)."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi <= lo:
        return dict.fromkeys(scores, 1.0)
    return {m: (x - lo) / (hi - lo) for m, x in scores.items()}


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
    # BM25 on an absolute scale: the share of the query's information a message matches.
    relevance = {m: min(1.0, s / mass) for m, s in lexical.items()}
    # For fusion, BM25 is read on the scale of the whole query: a term the conversation
    # never used (a paraphrase's word) counts at the highest IDF, so a query half made of
    # them reaches at most about half on BM25, and the embedding decides.
    unseen = sorted({t for t in q_terms if index.df(t) == 0})[:QUERY_TERMS]
    scale = mass + sum(index.idf(t) for t in unseen)
    lists: dict[str, Mapping[int, float]] = {
        "bm25": {m: min(1.0, s / scale) for m, s in lexical.items()} if scale else {}
    }
    qv: Sequence[float] | None = None
    if embed is not None and index.vectors():
        qv = index.query_vector(query, embed)
        cos = {m: c for m, c in index.cosines(qv, among).items() if c > 0.0}
        lists["cosine"] = _minmax(cos)
        for m, c in cos.items():
            if c > relevance.get(m, 0.0):
                relevance[m] = c
    tick()
    fused = fuse(lists)
    expansion: tuple[str, ...] = ()
    carried: frozenset[int] = frozenset()
    if second_pass and fused:
        # the best SEEDS that pass, by (score, id) descending: the order of `best`
        passing = ((x, m) for m, x in fused.items() if relevance[m] > min_relevance)
        seeds = [m for _, m in heapq.nlargest(SEEDS, passing)]
        if seeds:
            expansion = _bridges(index, seeds, fused, set(q_terms), among, lists, relevance)
            carried = frozenset(lists["bm25+"])
            if qv is not None:
                vecs = index.vectors()
                rows = [vecs[m] for m in seeds[:MEAN_SEEDS] if m in vecs]
                if rows:
                    mean = [sum(col) / len(rows) for col in zip(*rows)]
                    moved = [a + 0.5 * b for a, b in zip(qv, mean)]
                    lists["cosine+"] = _minmax(
                        {m: c for m, c in index.cosines(moved, among).items() if c > 0.0}
                    )
            tick()
            fused = fuse(lists)
    signal = "model" if qv is not None else "proxy"
    return Retrieval(fused, relevance, expansion, signal, carried)


def _bridges(
    index: RecallIndex,
    seeds: Sequence[int],
    fused: Mapping[int, float],
    exclude: Collection[str],
    among: Collection[int] | None,
    lists: dict[str, Mapping[int, float]],
    relevance: dict[int, float],
) -> tuple[str, ...]:
    """The second pass: messages that share a seed's names, places or numbers.

    Each seed's rarest `BRIDGE_TERMS` entity terms are a query of their own; a message
    they match scores the share of them it matches times the seed's fused score relative
    to the best seed, and keeps its best over the seeds (`"bm25+"`). A bridge found
    through one seed is not diluted by another seed's terms, and a weak seed bridges
    weakly. Returns the terms used.
    """
    top = fused[seeds[0]]
    bridge: dict[int, float] = {}
    used: list[str] = []
    for seed in seeds:
        names = index.top_terms([seed], exclude, BRIDGE_TERMS)
        query = dict.fromkeys(names, 1.0)
        mass = index.mass(query)
        if mass <= 0:
            continue
        used += names
        share = fused[seed] / top
        for m, x in index.bm25(query, among).items():
            score = share * min(1.0, x / mass)
            if m != seed and score > bridge.get(m, 0.0):
                bridge[m] = score
    lists["bm25+"] = bridge
    # Reached through a hit, a bridge is less sure than one: half its score is its relevance.
    for m, score in bridge.items():
        if 0.5 * score > relevance.get(m, 0.0):
            relevance[m] = 0.5 * score
    return tuple(dict.fromkeys(used))


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
