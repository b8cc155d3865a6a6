"""Lexical relevance: content terms, BM25 and hashed embeddings, standard library only.

These are the torch-free stand-ins for model signals. Every function is deterministic
(hashes are CRC-32, not Python's salted `hash`), and the per-text work is memoised, so a
policy that sees mostly the same segments turn after turn pays for each text once.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import chain

from fmai_core.memo import PER_SET_BYTES, PER_TEXT_BYTES, memo

__all__ = [
    "STOPWORDS",
    "LexicalIndex",
    "corpus_index",
    "cosine",
    "hashed_embedding",
    "stem",
    "terms",
]

_WORD = re.compile(r"\w+", re.UNICODE)

STOPWORDS: frozenset[str] = frozenset(
    """a about above after again against all also am an and any are as at be because been
    before being below between both but by can cannot could d did do does doing don down
    during each few for from further get got had has have having he her here hers herself
    him himself his how i if in into is it its itself just ll let m me more most much my
    myself no nor not now o of off oh ok okay on once only or other our ours ourselves out
    over own re really s same she should so some such t than thank thanks that the their
    theirs them themselves then there these they this those through to too under until up
    us ve very was we were what when where which while who whom why will with would y yeah
    yes you your yours yourself yourselves""".split()
)
_DOUBLE_OK = frozenset("lsz")
# Common irregular English verbs: the base form, then its past forms.
_IRREGULAR_TABLE = """
begin began begun; break broke broken; bring brought; buy bought; choose chose chosen;
come came; do did done; drive drove driven; eat ate eaten; fall fell fallen; feel felt;
find found; fly flew flown; forget forgot forgotten; give gave given; go went gone;
grow grew grown; have had; hear heard; keep kept; know knew known; leave left; lose lost;
make made; meet met; pay paid; ride rode ridden; say said; see saw seen; sell sold;
send sent; sing sang sung; speak spoke spoken; spend spent; take took taken; teach taught;
tell told; think thought; wear wore worn; win won; write wrote written
"""
_IRREGULAR: dict[str, str] = {
    form: entry.split()[0] for entry in _IRREGULAR_TABLE.split(";") for form in entry.split()[1:]
}


@memo(PER_TEXT_BYTES)
def stem(word: str) -> str:
    """Strip common English suffixes so that `names`/`name` and `called`/`call` meet.

    A light, rule-based stemmer (plural, `-ing`, `-ed`, `-ly`, `-ies`, and the past forms of
    about forty common irregular verbs, so `grew` meets `grow`): cheap and predictable, not
    linguistically complete. Numbers and words of three letters or fewer are unchanged.

    Examples:
        >>> [stem(w) for w in ["names", "called", "running", "stories", "boxes", "grew"]]
        ['name', 'call', 'run', 'story', 'box', 'grow']
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)]
            if len(base) >= 2 and base[-1] == base[-2] and base[-1] not in _DOUBLE_OK:
                base = base[:-1]
            return base
    if word.endswith("ly") and len(word) > 5:
        return word[:-2]
    if word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@memo(PER_TEXT_BYTES)
def terms(text: str) -> tuple[str, ...]:
    """Return the content terms of `text`: lower-cased, stemmed, stopwords removed.

    Examples:
        >>> terms("What is my sister's name?")
        ('sister', 'name')
    """
    out: list[str] = []
    for raw in _WORD.findall(text.lower()):
        if raw in STOPWORDS or (len(raw) == 1 and not raw.isdigit()):
            continue
        out.append(stem(raw))
    return tuple(out)


_TABLE = 256
_DAMPED = (0.0, *(1.0 + math.log(n) for n in range(1, _TABLE)))


def _bucket(feature: str, dim: int) -> int:
    return zlib.crc32(feature.encode("utf-8")) % dim


@memo(PER_TEXT_BYTES)
def _word_features(word: str, dim: int) -> tuple[tuple[int, int], ...]:
    """The hashed features of one content word: its stem (count 4) and its trigrams (1 each)."""
    counts: Counter[int] = Counter()
    counts[_bucket("w:" + stem(word), dim)] += 4
    padded = f"<{word}>"
    for i in range(len(padded) - 2):
        counts[_bucket("c:" + padded[i : i + 3], dim)] += 1
    return tuple(counts.items())


@memo(PER_TEXT_BYTES)
def hashed_embedding(text: str, dim: int = 1 << 20) -> Mapping[int, float]:
    """Embed `text` as a sparse unit vector by feature hashing (no model, no numpy).

    Features are the stemmed content terms and the character trigrams of each content word,
    padded with `<` and `>`, so that related word forms (`locker`/`lockers`, typos) still
    overlap. A term counts as much as four trigrams; counts are dampened with `1 + log(n)`.
    Collisions are negligible at the default `dim` of 2^20 buckets.

    Returns:
        A mapping from bucket to weight with unit L2 norm (empty for a text with no content
        word). Treat it as read-only: it is shared through a cache.
    """
    counts: dict[int, int] = {}
    for raw in _WORD.findall(text.lower()):
        if raw in STOPWORDS or (len(raw) == 1 and not raw.isdigit()):
            continue
        for bucket, n in _word_features(raw, dim):
            counts[bucket] = counts.get(bucket, 0) + n
    if not counts:
        return {}
    vec = {k: _DAMPED[v] if v < _TABLE else 1.0 + math.log(v) for k, v in counts.items()}
    norm = math.sqrt(sum(w * w for w in vec.values()))
    return {k: w / norm for k, w in vec.items()}


def cosine(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    """Dot product of two sparse vectors (their cosine when both have unit norm)."""
    if len(a) > len(b):
        a, b = b, a
    common = a.keys() & b.keys()  # a set operation in C; usually small or empty
    if not common:
        return 0.0
    return sum([w * b[k] for k, w in a.items() if k in common])


@memo(PER_TEXT_BYTES)
def _term_counts(doc: tuple[str, ...]) -> Mapping[str, int]:
    """Term frequencies of one document, in first-seen order (read-only: it is cached)."""
    return dict(Counter(doc))


class LexicalIndex:
    """BM25 over a small corpus of term sequences (a conversation's segments).

    Building it counts document frequencies only (one pass in C over cached per-document
    term counts); the postings of a term are gathered when a query first asks for it.

    Args:
        documents: One term sequence per document (see [`terms`][fmai_core.relevance.terms]).
        k1: Term-frequency saturation.
        b: Length normalisation.

    Examples:
        >>> index = LexicalIndex([terms("My sister is called Ada."), terms("Nice weather.")])
        >>> [round(s, 2) for s in index.normalized_scores(terms("my sister's name?"))]
        [0.92, 0.0]
    """

    def __init__(self, documents: Sequence[Sequence[str]], *, k1: float = 1.2, b: float = 0.75):
        self.k1 = k1
        self.b = b
        self.size = len(documents)
        self._counts = [_term_counts(tuple(doc)) for doc in documents]
        self._lengths = [len(doc) for doc in documents]
        self._avg = (sum(self._lengths) / self.size) if self.size else 1.0
        self._df: Counter[str] = Counter(chain.from_iterable(self._counts))
        self._idfs: dict[str, float] | None = None
        self._postings: dict[str, list[tuple[int, int]]] = {}

    def idf(self, term: str) -> float:
        """Inverse document frequency, always positive (a rare term weighs more)."""
        df = self._df.get(term, 0)
        return math.log(1.0 + (self.size - df + 0.5) / (df + 0.5))

    def frequencies(self) -> Mapping[str, int]:
        """The document frequency of every term of the corpus (read-only)."""
        return self._df

    def idfs(self) -> Mapping[str, float]:
        """The [`idf`][fmai_core.relevance.LexicalIndex.idf] of every term of the corpus.

        Computed once per index; treat it as read-only.
        """
        if self._idfs is None:
            size, log = self.size, math.log
            self._idfs = {
                t: log(1.0 + (size - df + 0.5) / (df + 0.5)) for t, df in self._df.items()
            }
        return self._idfs

    def counts(self, i: int) -> Mapping[str, int]:
        """Term frequencies of document `i`, in first-seen order (read-only)."""
        return self._counts[i]

    def _posting(self, term: str) -> list[tuple[int, int]]:
        postings = self._postings.get(term)
        if postings is None:
            postings = (
                [(i, c[term]) for i, c in enumerate(self._counts) if term in c]
                if term in self._df
                else []
            )
            self._postings[term] = postings
        return postings

    def scores(self, query: Sequence[str]) -> list[float]:
        """Return the BM25 score of every document for the query terms."""
        out = [0.0] * self.size
        avg = self._avg or 1.0
        for term in set(query):
            postings = self._posting(term)
            if not postings:
                continue
            idf = self.idf(term)
            for doc, tf in postings:
                norm = self.k1 * (1.0 - self.b + self.b * self._lengths[doc] / avg)
                out[doc] += idf * tf * (self.k1 + 1.0) / (tf + norm)
        return out

    def normalized_scores(self, query: Sequence[str]) -> list[float]:
        """BM25 divided by the query's total IDF, clipped to [0, 1].

        About the share of the query's information a document matches: a document that
        contains every query term once, at average length, scores about 1. Query terms that
        no document contains are left out (nothing could match them). Unlike dividing by
        the best score, this is absolute, so it can be thresholded.
        """
        mass = sum(self.idf(t) for t in set(query) if t in self._df)
        if mass <= 0.0:
            return [0.0] * self.size
        return [min(1.0, s / mass) for s in self.scores(query)]


@memo(PER_SET_BYTES)
def corpus_index(texts: tuple[str, ...]) -> LexicalIndex:
    """A [`LexicalIndex`][fmai_core.relevance.LexicalIndex] over the terms of `texts`, memoised.

    Policies call it with their candidates' texts. In recall mode the candidates are the
    archive, which stays the same from one eviction to the next, so the index (and the term
    postings its queries gather) is built once per eviction, not once per turn. The last 8
    sets of texts are kept; the index is shared, so treat it as read-only.
    """
    return LexicalIndex([terms(t) for t in texts])
