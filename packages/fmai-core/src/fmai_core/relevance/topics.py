"""Topic clusters over sparse vectors: spherical k-means through an inverted index.

Used by the `semantic` policy to cover the topics of a conversation, not only the one the
incoming message is about. Pure Python and fast at conversation scale because every
similarity is computed through an inverted index (feature -> documents holding it), so the
cost follows the number of shared features, not documents x dimensions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from fmai_core.relevance.lexical import LexicalIndex

__all__ = ["cluster", "default_topic_count", "tfidf_vectors"]

K = TypeVar("K", bound=Hashable)


def default_topic_count(n: int) -> int:
    """A topic count for `n` segments: about sqrt(n), between 1 and 16.

    Erring high is cheap for coverage (a topic split in two gets two shares), erring low is
    not (two topics merged into one can lose one of them).
    """
    return max(1, min(16, round(math.sqrt(n))))


def tfidf_vectors(documents: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    """Unit TF-IDF vectors of term sequences, with IDF taken within `documents`.

    Terms found in only one document are left out: they cannot link two segments into a
    topic, and would only dilute the vector.
    """
    index = LexicalIndex(documents)
    out: list[dict[str, float]] = []
    for doc in documents:
        vec = {
            t: (1.0 + math.log(tf)) * index.idf(t)
            for t, tf in Counter(doc).items()
            if index.df(t) > 1
        }
        norm = math.sqrt(sum(w * w for w in vec.values()))
        out.append({t: w / norm for t, w in vec.items()} if norm else {})
    return out


def _centroid(members: Sequence[Mapping[K, float]], top: int) -> dict[K, float]:
    total: dict[K, float] = {}
    for vec in members:
        for f, w in vec.items():
            total[f] = total.get(f, 0.0) + w
    kept = sorted(total.items(), key=lambda kv: (-kv[1], str(kv[0])))[:top]
    norm = math.sqrt(sum(w * w for _, w in kept))
    return {f: w / norm for f, w in kept} if norm else {}


def cluster(
    vectors: Sequence[Mapping[K, float]],
    k: int,
    *,
    iterations: int = 5,
    top: int = 48,
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
        for f, w in centroid.items():
            for doc, x in index.get(f, ()):
                out[doc] += w * x
        return out

    live = [i for i in range(n) if vectors[i]]
    if not live:
        return [-1] * n
    to_mean = sims(_centroid([vectors[i] for i in live], top * 4))
    first = max(live, key=lambda i: (to_mean[i], -i))
    centroids = [dict(vectors[first])]
    closest = sims(centroids[0])
    while len(centroids) < min(k, len(live)):
        nxt = min(live, key=lambda i: (closest[i], i))
        if closest[nxt] >= 0.999:  # every vector duplicates a seed: no more topics
            break
        centroids.append(dict(vectors[nxt]))
        closest = [max(a, b) for a, b in zip(closest, sims(centroids[-1]))]
    labels = [-1] * n
    for _ in range(iterations):
        table = [sims(c) for c in centroids]
        new = [-1] * n
        for i in live:
            best, score = -1, 0.0
            for c, row in enumerate(table):
                if row[i] > score:
                    best, score = c, row[i]
            new[i] = best
        if new == labels:
            break
        labels = new
        groups: list[list[Mapping[K, float]]] = [[] for _ in centroids]
        for i, c in enumerate(labels):
            if c >= 0:
                groups[c].append(vectors[i])
        centroids = [_centroid(g, top) if g else c for g, c in zip(groups, centroids)]
    return labels
