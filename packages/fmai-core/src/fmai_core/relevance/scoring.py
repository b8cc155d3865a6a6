"""Query relevance and budgeted selection helpers shared by the policies."""

from __future__ import annotations

import math
import operator
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence

from fmai_core.memo import PER_SET_BYTES, PER_TEXT_BYTES, memo
from fmai_core.policy_api import EmbedFn
from fmai_core.relevance.lexical import LexicalIndex, hashed_embedding, terms
from fmai_core.segments import Segment

__all__ = [
    "greedy_fill",
    "newest",
    "project",
    "query_relevance",
    "redundant",
]

# Share of the lexical (BM25) part in the relevance score; the rest is embedding cosine.
LEXICAL_SHARE_PROXY = 0.7
LEXICAL_SHARE_MODEL = 0.5
# Model embeddings are returned projected to this many dimensions (for topic clustering).
PROJECTED_DIMENSIONS = 32
# Bytes of projections kept (one per candidate turn's embedding, keyed by the vector's
# float64 bytes: about 5.5 KB each with its key at 384 dimensions, so about 1,500 turns).
PROJECTED_MEMO = 8 << 20


@memo(PER_SET_BYTES)
def _signs(length: int) -> tuple[float, ...]:
    return tuple(1.0 if zlib.crc32(str(i).encode("ascii")) & 1 else -1.0 for i in range(length))


def project(vector: Sequence[float], dimensions: int) -> dict[int, float]:
    """Project a dense vector to `dimensions` by signed feature hashing, at unit norm.

    A fixed random projection (input dimension `i` adds to output `i % dimensions` with a
    sign from CRC-32 of `i`): cosines are preserved approximately, and a model embedding
    becomes cheap to cluster.
    """
    signs = _signs(len(vector))
    out = [
        sum(map(operator.mul, vector[k::dimensions], signs[k::dimensions]))
        for k in range(dimensions)
    ]
    norm = math.sqrt(sum(x * x for x in out))
    return {i: x / norm for i, x in enumerate(out) if x} if norm else {}


@memo(PROJECTED_MEMO)
def _projected(key: bytes) -> Mapping[int, float]:
    """`project` to `PROJECTED_DIMENSIONS`, memoised by the vector's values (its float64
    bytes: a quarter of what a tuple of floats holds as a key).

    A turn's embedding is the same every turn it is a candidate, so its projection is computed
    once instead of on every turn (it was most of `query_relevance`'s time with a model
    embedder: ~30 of ~50 ms for 600 candidates). Keyed by value, not by text, so a different
    embedder can never be served another's projection.
    """
    vector = array("d")
    vector.frombytes(key)
    return project(vector, PROJECTED_DIMENSIONS)


def query_relevance(
    query: str,
    texts: Sequence[str],
    *,
    index: LexicalIndex | None = None,
    embed: EmbedFn | None = None,
) -> tuple[list[float], Sequence[Mapping[int, float]]]:
    """Score how relevant each text is to `query`, in [0, 1].

    The score mixes BM25 (normalised by the query's IDF mass, see
    [`LexicalIndex.normalized_scores`][fmai_core.relevance.LexicalIndex.normalized_scores])
    with the cosine of embeddings: a model's (`embed`) when given, else
    [`hashed_embedding`][fmai_core.relevance.hashed_embedding]. Lexical matching is always
    part of it, because names and numbers are what embeddings blur.

    Returns:
        The scores and the texts' sparse unit vectors, reusable for topic clustering: the
        hashed embeddings, or the model's embeddings projected to 32 dimensions (see
        [`project`][fmai_core.relevance.project]).
    """
    if not texts:
        return [], []
    index = index or LexicalIndex([terms(t) for t in texts])
    lexical = index.normalized_scores(terms(query))
    if embed is not None:
        dense = embed([query, *texts])
        norms = [math.sqrt(sum(map(operator.mul, v, v))) or 1.0 for v in dense]
        q, qn = dense[0], norms[0]
        cosines = [sum(map(operator.mul, q, v)) / (qn * n) for v, n in zip(dense[1:], norms[1:])]
        projected = [_projected(array("d", v).tobytes()) for v in dense[1:]]
        share = LEXICAL_SHARE_MODEL
        if not any(q):
            return lexical, projected
        scores = [share * lex + (1.0 - share) * max(0.0, c) for lex, c in zip(lexical, cosines)]
        return scores, projected
    query_vector = hashed_embedding(query)
    vectors = [hashed_embedding(t) for t in texts]
    if not query_vector:
        return lexical, vectors
    share = LEXICAL_SHARE_PROXY
    # The cosine of unit vectors over their shared buckets, all in C (set intersection, then
    # products); the same value as `cosine` up to the order of the sum.
    shared = query_vector.keys()
    weight = query_vector.__getitem__
    scores = []
    for lex, vec in zip(lexical, vectors):
        common = shared & vec.keys()
        dot = sum(map(operator.mul, map(weight, common), map(vec.__getitem__, common)))
        scores.append(share * lex + (1.0 - share) * max(0.0, dot))
    return scores, vectors


@memo(PER_TEXT_BYTES)
def _dedup_key(text: str) -> str:
    """`text` with case and runs of whitespace ignored (memoised)."""
    return " ".join(text.split()).casefold()


def redundant(candidates: Sequence[Segment], context: Sequence[Segment]) -> set[int]:
    """Ids of candidates not worth recalling: already in the prompt, or repeated.

    A candidate is redundant when its text (case and whitespace aside) is the text of a
    `context` segment, or of a newer candidate; the newest copy stays eligible.
    """

    key = _dedup_key
    seen = {key(s.text) for s in context}
    out: set[int] = set()
    for segment in reversed(candidates):
        k = key(segment.text)
        if k in seen:
            out.add(segment.id)
        seen.add(k)
    return out


def newest(candidates: Sequence[Segment], count: int, budget: int) -> list[Segment]:
    """The newest `count` candidates, newest first, stopping at the first that does not fit."""
    out: list[Segment] = []
    for segment in reversed(candidates):
        if len(out) >= count or segment.tokens > budget:
            break
        budget -= segment.tokens
        out.append(segment)
    return out


def greedy_fill(
    candidates: Sequence[Segment],
    scores: Sequence[float],
    budget: int,
    *,
    taken: Iterable[int] = (),
    minimum: float = 0.0,
) -> list[int]:
    """Add candidates by descending score (newer first on ties) while they fit.

    Args:
        candidates: The segments.
        scores: One score per candidate.
        budget: Tokens left after the segments in `taken`.
        taken: Ids already kept; they are skipped.
        minimum: Candidates scoring at or below this are never added.

    Returns:
        The ids added, best first.
    """
    skip = set(taken)
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], -i))
    added: list[int] = []
    for i in order:
        segment = candidates[i]
        if scores[i] <= minimum:
            break
        if segment.id in skip or segment.tokens > budget:
            continue
        budget -= segment.tokens
        added.append(segment.id)
    return added
