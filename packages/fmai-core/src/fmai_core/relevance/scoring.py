"""Query relevance and budgeted selection helpers shared by the policies."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from fmai_core.policies.base import EmbedFn
from fmai_core.relevance.lexical import LexicalIndex, cosine, hashed_embedding, terms
from fmai_core.segments import Segment

__all__ = ["dense_to_sparse", "greedy_fill", "newest", "query_relevance", "redundant"]

# Share of the lexical (BM25) part in the relevance score; the rest is embedding cosine.
LEXICAL_SHARE_PROXY = 0.7
LEXICAL_SHARE_MODEL = 0.5


def dense_to_sparse(vector: Sequence[float]) -> dict[int, float]:
    """Turn a dense vector (a model embedding) into a sparse unit vector."""
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:
        return {}
    return {i: x / norm for i, x in enumerate(vector) if x}


def query_relevance(
    query: str,
    texts: Sequence[str],
    *,
    index: LexicalIndex | None = None,
    embed: EmbedFn | None = None,
) -> tuple[list[float], list[Mapping[int, float]]]:
    """Score how relevant each text is to `query`, in [0, 1].

    The score mixes BM25 (normalised by the query's IDF mass, see
    [`LexicalIndex.normalized_scores`][fmai_core.relevance.LexicalIndex.normalized_scores])
    with the cosine of embeddings: a model's (`embed`) when given, else
    [`hashed_embedding`][fmai_core.relevance.hashed_embedding]. Lexical matching is always
    part of it, because names and numbers are what embeddings blur.

    Returns:
        The scores and the texts' sparse unit vectors (reusable for topic clustering).
    """
    if not texts:
        return [], []
    index = index or LexicalIndex([terms(t) for t in texts])
    lexical = index.normalized_scores(terms(query))
    if embed is not None:
        dense = embed([query, *texts])
        vectors: list[Mapping[int, float]] = [dense_to_sparse(v) for v in dense]
        share = LEXICAL_SHARE_MODEL
    else:
        vectors = [hashed_embedding(query), *(hashed_embedding(t) for t in texts)]
        share = LEXICAL_SHARE_PROXY
    q = vectors[0]
    if not q:
        return lexical, vectors[1:]
    scores = [
        share * lex + (1.0 - share) * max(0.0, cosine(q, vec))
        for lex, vec in zip(lexical, vectors[1:])
    ]
    return scores, vectors[1:]


def redundant(candidates: Sequence[Segment], context: Sequence[Segment]) -> set[int]:
    """Ids of candidates not worth recalling: already in the prompt, or repeated.

    A candidate is redundant when its text (case and whitespace aside) is the text of a
    `context` segment, or of a newer candidate; the newest copy stays eligible.
    """

    def key(text: str) -> str:
        return " ".join(text.split()).casefold()

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
