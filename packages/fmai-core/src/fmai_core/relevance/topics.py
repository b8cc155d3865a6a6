"""Topic clusters over sparse vectors: spherical k-means through an inverted index.

Used by the `semantic` policy to cover the topics of a conversation, not only the one the
incoming message is about. Pure Python and fast at conversation scale because every
similarity is computed through an inverted index (feature -> documents holding it), so the
cost follows the number of shared features, not documents x dimensions.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from fmai_core.deadline import tick
from fmai_core.relevance.lexical import LexicalIndex, _term_counts

__all__ = ["cluster", "default_topic_count", "tfidf_vectors"]

K = TypeVar("K", bound=Hashable)
_weight = operator.itemgetter(1)


def default_topic_count(n: int) -> int:
    """A topic count for `n` segments: about sqrt(n), between 1 and 12.

    Erring high is cheap for coverage (a topic split in two gets two shares), erring low is
    not (two topics merged into one can lose one of them).
    """
    return max(1, min(12, round(math.sqrt(n))))


def tfidf_vectors(
    documents: Sequence[Sequence[str]],
    *,
    max_df: float = 0.1,
    features: int = 12,
    index: LexicalIndex | None = None,
) -> list[dict[str, float]]:
    """Unit TF-IDF vectors of term sequences, with IDF taken within `documents`.

    Only terms that can tell topics apart are kept: a term in a single document cannot link
    two segments into a topic, and a term in more than `max_df` of them (a filler word) does
    not separate topics. Each vector keeps its `features` heaviest terms. This keeps the
    inverted index small, so clustering 500 segments takes milliseconds. Pass `index` if a
    [`LexicalIndex`][fmai_core.relevance.LexicalIndex] of the same documents exists.
    """
    index = index or LexicalIndex(documents)
    limit = max(2, int(max_df * len(documents)))
    idfs = index.idfs()
    useful = {t: idfs[t] for t, df in index.frequencies().items() if 1 < df <= limit}
    log, sqrt = math.log, math.sqrt
    same = index.size == len(documents)  # the documented case: reuse its term counts
    out: list[dict[str, float]] = []
    for i, doc in enumerate(documents):
        counts = index.counts(i) if same else _term_counts(tuple(doc))
        weights = {
            t: w if tf == 1 else (1.0 + log(tf)) * w
            for t, tf in counts.items()
            if (w := useful.get(t))
        }
        if not weights:
            out.append({})
            continue
        if len(weights) > features:  # stable: ties keep first-seen
            weights = dict(sorted(weights.items(), key=_weight, reverse=True)[:features])
        values = list(weights.values())
        norm = sqrt(sum(map(operator.mul, values, values)))
        out.append({t: w / norm for t, w in weights.items()} if norm else {})
    return out


def _centroid(members: Sequence[Mapping[K, float]], top: int) -> dict[K, float]:
    total: dict[K, float] = {}
    get = total.get
    for vec in members:
        for f, w in vec.items():
            total[f] = get(f, 0.0) + w
    kept = sorted(total.items(), key=_weight, reverse=True)[:top]  # stable: ties keep first-seen
    norm = math.sqrt(sum([w * w for _, w in kept]))
    return {f: w / norm for f, w in kept} if norm else {}


def _closest_pair(centroids: Sequence[Mapping[K, float]]) -> tuple[int, int] | None:
    """The two most similar centroids, or `None` when no two share a feature."""
    best = 0.0
    pair: tuple[int, int] | None = None
    for a in range(len(centroids)):
        for b in range(a + 1, len(centroids)):
            x, y = centroids[a], centroids[b]
            common = x.keys() & y.keys()
            dot = sum([w * y[f] for f, w in x.items() if f in common]) if common else 0.0
            if dot > best:
                best, pair = dot, (a, b)
    return pair


def cluster(
    vectors: Sequence[Mapping[K, float]],
    k: int,
    *,
    iterations: int = 4,
    top: int = 16,
) -> list[int]:
    """Group sparse unit vectors into at most `k` topics (deterministic).

    Spherical k-means: seeds by farthest-first traversal (the first seed is the vector
    closest to the mean), then alternate assignment by cosine and centroid update, where a
    centroid keeps only its `top` heaviest features. Vectors sharing no feature with any
    centroid (an empty vector, an off-topic remark) get the label `-1`.

    Args:
        vectors: Sparse vectors with unit norm (e.g. from
            [`tfidf_vectors`][fmai_core.relevance.tfidf_vectors] or a model's embeddings).
        k: Most topics to form.
        iterations: Most assignment/update rounds (stops early when labels settle).
        top: Features kept per centroid.

    Returns:
        One label per vector, in `range(k)` or `-1`.
    """
    n = len(vectors)
    if n == 0 or k <= 0:
        return [-1] * n
    index: dict[K, list[tuple[int, float]]] = {}
    for i, vec in enumerate(vectors):
        for f, w in vec.items():
            index.setdefault(f, []).append((i, w))

    def sims(centroid: Mapping[K, float]) -> list[float]:
        out = [0.0] * n
        postings = index.get
        for f, w in centroid.items():
            for doc, x in postings(f, ()):
                out[doc] += w * x
        return out

    if len(index) <= 64 and sum(map(len, index.values())) > n * len(index) // 2:
        # Dense vectors (projected model embeddings): row-wise dot products run in C.
        features = list(index)
        matrix = [[vec.get(f, 0.0) for f in features] for vec in vectors]

        def sims(centroid: Mapping[K, float]) -> list[float]:
            column = [centroid.get(f, 0.0) for f in features]
            return [sum(map(operator.mul, row, column)) for row in matrix]

    live = [i for i in range(n) if vectors[i]]
    if not live:
        return [-1] * n
    to_mean = sims(_centroid([vectors[i] for i in live], top * 4))
    first = max(live, key=to_mean.__getitem__)
    centroids: list[Mapping[K, float]] = [vectors[first]]
    rows = [sims(vectors[first])]
    closest = rows[0]
    while len(centroids) < min(k, len(live)):
        nxt = min(live, key=closest.__getitem__)
        if closest[nxt] >= 0.999:  # every vector duplicates a seed: no more topics
            break
        tick()
        centroids.append(vectors[nxt])
        rows.append(sims(vectors[nxt]))
        closest = [x if x >= y else y for x, y in zip(closest, rows[-1])]  # map(max) is slower
    labels: list[int] = []
    reseeded = -2
    for step in range(iterations):
        tick()
        if step:
            rows = [sims(c) for c in centroids]
        best = list(map(max, *rows)) if len(rows) > 1 else rows[0]
        # the first centroid with the best score; -1 where no centroid shares a feature
        new = [c if s > 0.0 else -1 for c, s in zip(map(tuple.index, zip(*rows), best), best)]
        orphans = [i for i in live if new[i] < 0]
        settled = new == labels and len(orphans) < max(2, len(live) // 50)
        labels = new
        if settled or step == iterations - 1:
            break
        groups: list[list[Mapping[K, float]]] = [[] for _ in centroids]
        for i, c in enumerate(labels):
            if c >= 0:
                groups[c].append(vectors[i])
        centroids = [_centroid(g, top) if g else c for g, c in zip(groups, centroids)]
        if len(orphans) >= max(2, len(live) // 50) and step > reseeded + 1:
            # A topic got no seed (two seeds fell in one topic): merge the two closest
            # centroids if no slot is free, and seed the most central orphan. Wait a round
            # after a reseed so the new centroid can grow.
            pair = _closest_pair(centroids) if len(centroids) >= k else None
            if pair is not None:
                a, b = pair
                centroids[a] = _centroid([*groups[a], *groups[b]], top)
                del centroids[b]
            if pair is not None or len(centroids) < k:
                centroids.append(vectors[max(orphans, key=to_mean.__getitem__)])
                reseeded = step
    return labels
