"""Torch-free relevance signals for the memory policies.

Everything here uses the standard library only: content terms and a light stemmer, BM25,
hashed embeddings (feature hashing of words and character trigrams), topic clustering
(spherical k-means through an inverted index), and an information-content score that stands
in for a model's attention. Model signals, when a backend offers them, replace the proxies;
see the policies page of the docs.
"""

from __future__ import annotations

from collections.abc import Iterable

from fmai_core.relevance.information import corpus_information, information, recency
from fmai_core.relevance.lexical import (
    STOPWORDS,
    LexicalIndex,
    corpus_index,
    cosine,
    hashed_embedding,
    stem,
    terms,
)
from fmai_core.relevance.scoring import (
    greedy_fill,
    newest,
    project,
    query_relevance,
    redundant,
)
from fmai_core.relevance.topics import cluster, default_topic_count, tfidf_vectors

__all__ = [
    "STOPWORDS",
    "LexicalIndex",
    "clear_caches",
    "cluster",
    "corpus_index",
    "corpus_information",
    "cosine",
    "default_topic_count",
    "greedy_fill",
    "hashed_embedding",
    "information",
    "newest",
    "project",
    "query_relevance",
    "recency",
    "redundant",
    "stem",
    "terms",
    "tfidf_vectors",
    "warm",
]


def warm(texts: Iterable[str]) -> None:
    """Compute the per-text features the torch-free proxies use, into their memo caches.

    These are the content terms and their counts, the hashed embedding, the information
    cues and the duplicate key of each text. [`Policy.prepare`][fmai_core.policies.Policy.prepare]
    calls it for segments as they enter memory, so a later eviction or recall only does the
    work that depends on the whole candidate set and the query.
    """
    from fmai_core.relevance.information import _cues
    from fmai_core.relevance.lexical import _term_counts
    from fmai_core.relevance.scoring import _dedup_key

    for text in texts:
        _term_counts(terms(text))
        hashed_embedding(text)
        _cues(text)
        _dedup_key(text)


def clear_caches() -> None:
    """Empty every memo cache (see [`fmai_core.memo`][fmai_core.memo]).

    Each memo is capped by bytes (per-text memos at `PER_TEXT_BYTES`, per-candidate-set
    memos at `PER_SET_BYTES`); clear them to free memory or to measure cold-start cost.
    """
    from fmai_core.memo import clear_caches as clear

    clear()
