"""`semantic`: relevance to the incoming message plus coverage of the conversation's topics."""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from fmai_core.deadline import tick
from fmai_core.memo import PER_SET_BYTES, memo
from fmai_core.policies.base import PolicyRequest
from fmai_core.policies.scored import ScoredPolicy
from fmai_core.relevance import (
    LexicalIndex,
    cluster,
    corpus_index,
    default_topic_count,
    query_relevance,
    terms,
    tfidf_vectors,
)
from fmai_core.relevance.scoring import PROJECTED_DIMENSIONS

__all__ = ["SemanticPolicy", "topic_geometry"]

K = TypeVar("K", bound=Hashable)


def topic_geometry(
    vectors: Sequence[Mapping[K, float]], labels: Sequence[int]
) -> tuple[list[float], dict[int, dict[int, float]]]:
    """Centrality of each vector and the similarity between topics.

    Returns:
        The cosine of each vector with its topic's centroid (0 for unclustered vectors), and
        `overlap[a][b]`, the cosine between the centroids of topics `a` and `b` (1 on the
        diagonal). Overlap lets a segment of one topic count against a near-duplicate topic.
    """
    sums: dict[int, dict[K, float]] = {}
    for vec, label in zip(vectors, labels):
        if label < 0:
            continue
        total = sums.setdefault(label, {})
        get = total.get
        for f, w in vec.items():
            total[f] = get(f, 0.0) + w
    norms = {c: math.sqrt(sum(w * w for w in t.values())) or 1.0 for c, t in sums.items()}
    central: list[float] = []
    for vec, label in zip(vectors, labels):
        if label < 0:
            central.append(0.0)
            continue
        weight = sums[label].__getitem__  # the topic's sum holds every feature of its members
        central.append(sum(map(operator.mul, vec.values(), map(weight, vec))) / norms[label])
    overlap: dict[int, dict[int, float]] = {c: {c: 1.0} for c in sums}
    topics = sorted(sums)
    for i, a in enumerate(topics):
        for b in topics[i + 1 :]:
            x, y = sums[a], sums[b]
            common = x.keys() & y.keys()  # in C; the sum keeps x's order
            if not common:
                continue
            dot = sum([w * y[f] for f, w in x.items() if f in common]) / (norms[a] * norms[b])
            if dot > 0.0:
                overlap[a][b] = overlap[b][a] = dot
    overlap[-1] = {-1: 1.0}
    return central, overlap


def _topics(
    texts: Sequence[str], k: int, index: LexicalIndex | None = None
) -> tuple[list[int], list[float], dict[int, dict[int, float]]]:
    """Topic labels over TF-IDF term vectors of `texts`, with their centrality and overlap.

    `index` is a [`LexicalIndex`][fmai_core.relevance.LexicalIndex] of the same texts, if
    one exists.
    """
    docs = [terms(t) for t in texts]
    term_vectors = tfidf_vectors(docs, index=index)
    labels = cluster(term_vectors, k)
    central, overlap = topic_geometry(term_vectors, labels)
    return labels, central, overlap


@memo(PER_SET_BYTES)
def _term_topics(
    texts: tuple[str, ...], k: int
) -> tuple[list[int], list[float], dict[int, dict[int, float]]]:
    """`_topics` of a whole candidate set, memoised (read-only).

    They depend only on the candidates' texts, so a policy called again on the same
    candidates (another question, the same history) does not cluster them again. The result
    is the same whether it comes from the memo or not.
    """
    return _topics(texts, k, corpus_index(texts))


@dataclass(frozen=True)
class SemanticPolicy(ScoredPolicy):
    """Keep what is relevant to the incoming message and cover every topic of the rest.

    Each candidate gets a relevance score (BM25 mixed with embedding cosine: the model's
    embeddings through `signals.embed`, else hashed embeddings) and a topic label (spherical
    k-means over the model's embeddings, projected to 32 dimensions, else over TF-IDF term
    vectors). Selection is greedy
    with diminishing returns per topic: a candidate's value is
    `relevance_weight * relevance + (1 - relevance_weight) * centrality`, divided by
    `1 + load`, where `load` counts the segments already kept from its topic, plus those
    kept from other topics weighted by how similar the topics' centroids are (see
    [`topic_geometry`][fmai_core.policies.semantic.topic_geometry]). So the second segment of
    a topic competes with the first of another, and a topic split in two does not get a
    double share. The topics are formed over every candidate and the newest `keep_recent`
    segments are always kept. In `"recall"` mode it uses the shared recall
    ([`fmai_core.retrieval`][fmai_core.retrieval]).

    Attributes:
        relevance_weight: Weight of relevance against topic centrality.
        topics: Number of topics to form; `None` picks about `sqrt(n)` (at most 12).
        keep_recent: Newest segments always kept in evict mode.
        min_relevance: Relevance a segment needs to be recalled.

    Stats (evict mode): `signal`, `topics` (topics formed), `topics_kept` (topics with a kept
    segment), `kept`, `kept_tokens`.
    """

    name: ClassVar[str] = "semantic"

    relevance_weight: float = 0.6
    topics: int | None = None
    keep_recent: int = 2
    min_relevance: float = 0.15

    def fill(
        self, request: PolicyRequest, reserved: frozenset[int], budget: int
    ) -> tuple[list[int], dict[str, Any]]:
        """Pick relevant segments, spreading the budget over topics."""
        candidates = request.candidates
        texts = tuple(c.text for c in candidates)
        embed = request.signals.embed
        relevance, vectors = query_relevance(
            request.query, texts, index=corpus_index(texts), embed=embed
        )
        tick()
        keep: list[int] = []
        eligible = [i for i, c in enumerate(candidates) if c.id not in reserved]
        # Topics over every candidate, to cover the conversation.
        k = self.topics if self.topics is not None else default_topic_count(len(candidates))
        if embed is not None:  # topics over the model's embeddings, projected to 32 dims
            labels = cluster(vectors, k, top=PROJECTED_DIMENSIONS)
            central, overlap = topic_geometry(vectors, labels)
        else:  # topics over TF-IDF term vectors
            labels, central, overlap = _term_topics(texts, k)
        n = len(candidates)
        base = [
            self.relevance_weight * r
            + (1.0 - self.relevance_weight) * c
            # a tiny recency term fills spare budget with the newest leftovers
            + 1e-3 * (i + 1) / n
            for i, (r, c) in enumerate(zip(relevance, central))
        ]
        tokens = [c.tokens for c in candidates]
        # load[t]: how much of topic t the kept segments already cover (a kept segment of
        # topic u adds overlap[t][u]); a candidate's value is divided by 1 + load.
        load: dict[int, float] = {}

        def cover(label: int) -> None:
            for other, sim in overlap[label].items():
                load[other] = load.get(other, 0.0) + sim

        for i, c in enumerate(candidates):
            if c.id in reserved:
                cover(labels[i])
        # Greedy: each step takes the best candidate over all topics. Within a topic the
        # order never changes (one divisor per topic), so each topic is a sorted queue and a
        # step costs one look per topic; a candidate too big for the budget never fits later.
        queues: dict[int, list[int]] = {}
        for i in eligible:
            queues.setdefault(labels[i], []).append(i)
        for queue in queues.values():
            queue.sort(key=lambda i: (-base[i], -i))
        heads = dict.fromkeys(queues, 0)
        while budget > 0:
            tick()
            best: tuple[float, int] | None = None
            for topic, queue in queues.items():
                h = heads[topic]
                while h < len(queue) and tokens[queue[h]] > budget:
                    h += 1
                heads[topic] = h
                if h < len(queue):
                    option = (base[queue[h]] / (1.0 + load.get(topic, 0.0)), queue[h])
                    if best is None or option > best:
                        best = option
            if best is None or best[0] <= 0.0:
                break
            i = best[1]
            heads[labels[i]] += 1
            keep.append(candidates[i].id)
            budget -= tokens[i]
            cover(labels[i])
        kept = reserved.union(keep)
        return keep, {
            "signal": "model" if embed is not None else "proxy",
            "topics": len({lab for lab in labels if lab >= 0}),
            "topics_kept": len(
                {labels[i] for i, c in enumerate(candidates) if c.id in kept and labels[i] >= 0}
            ),
        }
