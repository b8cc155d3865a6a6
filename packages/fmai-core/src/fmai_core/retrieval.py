"""Recall: finding the archived turns a question needs.

Every recalling policy uses the same retrieval for its `"recall"` mode (their evictions
differ; the archive search does not need to). It works on whole messages (turns), not on
the sentence parts a long message is split into, and it is torch-free:

1. **Lexical.** BM25 over each message's content terms, its speaker's name and its date
   (so "what did Caroline say in May?" meets Caroline's turns of May).
2. **Embeddings,** when the conversation has an embedder (`FiniteMemoryLLM(embedder=...)`
   or a backend that embeds): the cosine of the question with each message. The two
   rankings are fused by weighted reciprocal-rank fusion (Cormack et al., 2009), which needs
   no calibration between BM25 scores and cosines.
3. **A second pass** for questions whose evidence is spread over several turns: the query
   grows by the rarest terms (names, places, dates) of the first pass's best hits, and the
   embedding query moves toward them (pseudo-relevance feedback, Rocchio), so "where does
   the friend from the ceramics course live?" reaches "Jess moved to Denver" through "I met
   Jess at pottery class". Its ranking joins the fusion at half weight.
4. **Neighbours.** A hit brings the other half of its question-and-answer pair: the
   question it answers (the other speaker's turn before it, when that asks something), or
   the reply it got (when the hit asks something). The partner gets a share of the hit's
   score, so it competes with weaker hits for the budget.

The budget is filled greedily in that order, a message at a time: a turn that was split
into parts comes back whole, or not at all. [`RecallIndex`][fmai_core.retrieval.RecallIndex]
keeps the postings and the embeddings incrementally, per conversation, so a turn's cost
grows with what the query matches, not with the archive.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fmai_core.deadline import PolicyTimeout, check_deadline, tick
from fmai_core.policies.base import EmbedFn, PolicyRequest, Selection
from fmai_core.relevance.lexical import STOPWORDS, terms
from fmai_core.relevance.scoring import redundant
from fmai_core.segments import Segment

__all__ = [
    "PolicyTimeout",
    "RecallIndex",
    "Retrieval",
    "check_deadline",
    "recall",
    "recall_need",
]

RRF_K = 60.0
# Fusion weights: first-pass BM25 and cosine count fully, the second pass at half weight.
_WEIGHTS = {"bm25": 1.0, "cosine": 1.0, "bm25+": 0.5, "cosine+": 0.5}


def _meta_terms(segment: Segment) -> tuple[str, ...]:
    extra: list[str] = []
    for text in (segment.name, segment.timestamp):
        if text:
            extra += terms(text)
    return tuple(extra)


@dataclass(frozen=True)
class _Doc:
    counts: Mapping[str, int]
    length: int


class RecallIndex:
    """An incremental index of a conversation's messages: BM25 postings and embeddings.

    The engine keeps one per conversation and adds each message as it enters memory
    ([`Policy.prepare`][fmai_core.policies.Policy.prepare] time), so recall never re-indexes
    the archive. Structures are append-only: a policy worker abandoned past its deadline may
    still read them while the engine adds the next turn.

    Args:
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
    """

    def __init__(self, *, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._docs: dict[int, _Doc] = {}
        self._postings: dict[str, list[tuple[int, int]]] = {}
        self._total_length = 0
        self._vectors: dict[int, tuple[float, ...]] = {}
        self._queries: dict[str, tuple[float, ...]] = {}
        self.embedder: str | None = None

    # -- building ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Messages indexed."""
        return len(self._docs)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._docs

    def add(self, segments: Iterable[Segment], embed: EmbedFn | None = None) -> None:
        """Index the messages of `segments` that are not indexed yet (one document each).

        Args:
            segments: Segments in conversation order; the parts of a message arrive together.
            embed: Embeds the new messages' texts in one batch, when given.
        """
        grouped: dict[int, list[Segment]] = {}
        for s in segments:
            if s.kind in ("message", "part") and s.message_id not in self._docs:
                grouped.setdefault(s.message_id, []).append(s)
        texts: list[tuple[int, str]] = []
        for mid, parts in grouped.items():
            text = parts[0].text + "".join(p.sep + p.text for p in parts[1:])
            doc_terms = (*terms(text), *_meta_terms(parts[0]))
            counts = Counter(doc_terms)
            for term, tf in counts.items():
                self._postings.setdefault(term, []).append((mid, tf))
            self._total_length += len(doc_terms)
            self._docs[mid] = _Doc(counts, len(doc_terms))
            texts.append((mid, text))
        if embed is not None and texts:
            self.add_vectors(dict(zip((m for m, _ in texts), embed([t for _, t in texts]))))

    def add_vectors(self, vectors: Mapping[int, Sequence[float]]) -> None:
        """Store message embeddings (normalised to unit length)."""
        for mid, vec in vectors.items():
            self._vectors[mid] = _unit(vec)

    def vectors(self) -> Mapping[int, tuple[float, ...]]:
        """The stored embeddings by message id (read-only)."""
        return self._vectors

    def missing_vectors(self, message_ids: Iterable[int]) -> list[int]:
        """The messages among `message_ids` that have no embedding yet."""
        return [m for m in message_ids if m not in self._vectors]

    def query_vector(self, query: str, embed: EmbedFn) -> tuple[float, ...]:
        """The unit embedding of `query`, memoised for the last few queries."""
        vec = self._queries.get(query)
        if vec is None:
            vec = _unit(embed([query])[0])
            if len(self._queries) >= 8:
                self._queries.pop(next(iter(self._queries)))
            self._queries[query] = vec
        return vec

    # -- scoring ----------------------------------------------------------------------------
    def idf(self, term: str) -> float:
        """BM25 inverse document frequency over every indexed message."""
        df = len(self._postings.get(term, ()))
        n = len(self._docs)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def bm25(self, query: Mapping[str, float], among: Collection[int]) -> dict[int, float]:
        """BM25 of the messages in `among` that match, for weighted query terms."""
        out: dict[int, float] = {}
        avg = (self._total_length / len(self._docs)) if self._docs else 1.0
        k1, b, docs = self.k1, self.b, self._docs
        for term, weight in query.items():
            tick()
            postings = self._postings.get(term)
            if not postings:
                continue
            idf = self.idf(term) * weight
            for mid, tf in postings:
                if mid in among:
                    norm = k1 * (1.0 - b + b * docs[mid].length / avg)
                    out[mid] = out.get(mid, 0.0) + idf * tf * (k1 + 1.0) / (tf + norm)
        return out

    def mass(self, query: Mapping[str, float]) -> float:
        """The weighted IDF of the query terms the index knows (BM25's scale)."""
        return sum(self.idf(t) * w for t, w in query.items() if t in self._postings)

    def cosines(self, vector: Sequence[float], among: Collection[int]) -> dict[int, float]:
        """Cosine of `vector` with the stored embedding of each message in `among`."""
        ids = [m for m in among if m in self._vectors]
        if not ids:
            return {}
        rows = [self._vectors[m] for m in ids]
        try:
            import numpy as np  # noqa: TID251 - lazy: present wherever a model embedder is
        except ImportError:
            return {m: sum(map(operator.mul, vector, r)) for m, r in zip(ids, rows)}
        sims = np.asarray(rows, dtype=np.float32) @ np.asarray(vector, dtype=np.float32)
        return dict(zip(ids, sims.tolist()))

    def top_terms(self, message_ids: Iterable[int], exclude: Collection[str], n: int) -> list[str]:
        """The `n` most informative terms (tf x idf) of the messages, outside `exclude`."""
        weights: dict[str, float] = {}
        for mid in message_ids:
            doc = self._docs.get(mid)
            if doc is None:
                continue
            for term, tf in doc.counts.items():
                if term not in exclude and term not in STOPWORDS and len(term) > 2:
                    weights[term] = max(weights.get(term, 0.0), tf * self.idf(term))
        return sorted(weights, key=lambda t: (-weights[t], t))[:n]

    def prune(self, live: Collection[int]) -> None:
        """Drop messages outside `live` (archive overflow), rebuilding the postings."""
        dead = [m for m in self._docs if m not in live]
        if not dead:
            return
        gone = set(dead)
        docs = {m: d for m, d in self._docs.items() if m not in gone}
        postings: dict[str, list[tuple[int, int]]] = {}
        for mid, doc in docs.items():
            for term, tf in doc.counts.items():
                postings.setdefault(term, []).append((mid, tf))
        self._postings = postings
        self._docs = docs
        self._total_length = sum(d.length for d in docs.values())
        self._vectors = {m: v for m, v in self._vectors.items() if m not in gone}

    # -- persistence ------------------------------------------------------------------------
    def vectors_to_dict(self) -> dict[str, Any] | None:
        """The embeddings as JSON-ready data (base64 float32), or `None` when there are none."""
        if not self._vectors or self.embedder is None:
            return None
        import base64
        from array import array

        dim = len(next(iter(self._vectors.values())))
        return {
            "embedder": self.embedder,
            "dimensions": dim,
            "vectors": {
                str(m): base64.b64encode(array("f", v).tobytes()).decode("ascii")
                for m, v in sorted(self._vectors.items())
            },
        }

    def load_vectors(self, data: Mapping[str, Any], embedder: str | None) -> int:
        """Restore embeddings saved by `vectors_to_dict` if they come from `embedder`.

        Returns:
            How many vectors were restored (0 when the embedder differs).
        """
        import base64
        import sys
        from array import array

        if embedder is None or data.get("embedder") != embedder:
            return 0
        dim = int(data["dimensions"])
        out: dict[int, tuple[float, ...]] = {}
        for key, blob in dict(data["vectors"]).items():
            values = array("f")
            values.frombytes(base64.b64decode(blob))
            if sys.byteorder != "little":
                values.byteswap()
            if len(values) != dim:
                raise ValueError(f"embedding of message {key} has {len(values)} values, not {dim}")
            out[int(key)] = tuple(values)
        self._vectors.update(out)
        return len(out)


def _unit(vector: Sequence[float]) -> tuple[float, ...]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return tuple(float(x) / norm for x in vector)


@lru_cache(maxsize=4)
def _standalone_index(segments: tuple[Segment, ...]) -> RecallIndex:
    """An index over `segments` for a policy called without the engine's (memoised)."""
    index = RecallIndex()
    index.add(segments)
    return index


def _speaker(segment: Segment) -> tuple[str, str | None]:
    return segment.role, segment.name


def _ranks(scores: Mapping[int, float]) -> dict[int, int]:
    order = sorted(scores, key=lambda m: (-scores[m], -m))
    return {m: r for r, m in enumerate(order, 1)}


@dataclass(frozen=True)
class Retrieval:
    """The ranking of messages for one query.

    Attributes:
        fused: Fused score by message id (higher is better), for the matching messages.
        relevance: An absolute relevance in [0, 1] by message id (normalised BM25, or the
            cosine when it is higher), which the recall threshold applies to.
        second_pass: Terms the second pass added to the query.
        signal: `"model"` when embeddings took part, else `"proxy"`.
    """

    fused: Mapping[int, float]
    relevance: Mapping[int, float]
    second_pass: tuple[str, ...]
    signal: str


def retrieve(
    index: RecallIndex,
    query: str,
    among: Collection[int],
    *,
    embed: EmbedFn | None = None,
    min_relevance: float = 0.15,
    second_pass: bool = True,
    deadline: Callable[[], None] = lambda: None,
) -> Retrieval:
    """Rank the messages `among` for `query` (see the module docs for the method)."""
    q_terms = terms(query)
    q = dict.fromkeys(q_terms, 1.0)
    mass = index.mass(q)
    lexical = index.bm25(q, among) if mass > 0 else {}
    relevance = {m: min(1.0, s / mass) for m, s in lexical.items()}
    lists: dict[str, dict[int, float]] = {"bm25": lexical}
    qv: tuple[float, ...] | None = None
    if embed is not None and index.vectors():
        qv = index.query_vector(query, embed)
        cos = index.cosines(qv, among)
        lists["cosine"] = {m: c for m, c in cos.items() if c > 0.0}
        for m, c in cos.items():
            if c > relevance.get(m, 0.0):
                relevance[m] = c
    deadline()
    fused = _fuse(lists)
    added: tuple[str, ...] = ()
    if second_pass and fused:
        seeds = [m for m in sorted(fused, key=lambda m: -fused[m]) if relevance[m] > min_relevance]
        seeds = seeds[:3]
        if seeds:
            added = tuple(index.top_terms(seeds, set(q_terms), 6))
            grown = dict.fromkeys(added, 0.5)
            more = index.bm25({**q, **grown}, among) if added else {}
            lists["bm25+"] = more
            # A second-pass hit counts as relevant by the share of the added terms it
            # matches, at half weight: reached through a hit, it is less sure than one.
            mass2 = index.mass(grown)
            for m, s in (index.bm25(grown, among) if mass2 > 0 else {}).items():
                r = 0.5 * min(1.0, s / mass2)
                if r > relevance.get(m, 0.0):
                    relevance[m] = r
            if qv is not None:
                vecs = index.vectors()
                mean = [
                    sum(col) / len(seeds) for col in zip(*(vecs[m] for m in seeds if m in vecs))
                ]
                if mean:
                    moved = _unit([a + 0.5 * b for a, b in zip(qv, mean)])
                    lists["cosine+"] = {
                        m: c for m, c in index.cosines(moved, among).items() if c > 0.0
                    }
            fused = _fuse(lists)
    return Retrieval(fused, relevance, added, "model" if qv is not None else "proxy")


def _fuse(lists: Mapping[str, Mapping[int, float]]) -> dict[int, float]:
    fused: dict[int, float] = {}
    for name, scores in lists.items():
        weight = _WEIGHTS[name]
        for m, r in _ranks(scores).items():
            fused[m] = fused.get(m, 0.0) + weight / (RRF_K + r)
    return fused


def recall_need(
    index: RecallIndex,
    query: str,
    recent: Collection[int],
    older: Collection[int],
    *,
    embed: EmbedFn | None = None,
    min_relevance: float = 0.15,
    top: int = 8,
) -> float:
    """How much of the question's evidence lies outside the recent history, in [0, 1].

    The messages of the whole conversation are ranked for the query; of the `top` best
    that pass the recall threshold, the share of fused score held by `older` ones (archived,
    or about to be) is the answer. A follow-up about what was just said scores near 0; a
    question about the distant past near 1. No match at all scores 0.
    """
    among = set(recent) | set(older)
    if not among:
        return 0.0
    found = retrieve(
        index, query, among, embed=embed, min_relevance=min_relevance, second_pass=False
    )
    best = sorted(found.fused, key=lambda m: -found.fused[m])
    best = [m for m in best if found.relevance.get(m, 0.0) > min_relevance][:top]
    if not best:
        return 0.0
    total = sum(found.fused[m] for m in best)
    return sum(found.fused[m] for m in best if m in older) / total


def recall(
    request: PolicyRequest,
    *,
    min_relevance: float = 0.15,
    neighbours: float = 0.6,
    second_pass: bool = True,
) -> Selection:
    """Choose archived messages for `request` (a `"recall"` request) within its budget.

    Args:
        request: The policy request; `request.index` is the conversation's index (one is
            built from the candidates when absent).
        min_relevance: Relevance a message needs to come back on its own (neighbours of one
            that does come with it).
        neighbours: Share of a hit's score its adjacent turns get (0 turns it off).
        second_pass: Whether to run the query-expansion pass.

    Returns:
        The kept segment ids, whole messages only.
    """
    candidates = request.candidates
    if not candidates or request.budget <= 0:
        return Selection(keep=(), stats={"signal": "none", "kept": 0, "kept_tokens": 0})
    index = request.index
    if index is None or any(c.message_id not in index for c in candidates):
        index = _standalone_index(tuple(candidates))
    units: dict[int, list[Segment]] = {}
    for c in candidates:
        units.setdefault(c.message_id, []).append(c)
    skip = redundant(candidates, request.context)
    usable = {m for m, parts in units.items() if not all(p.id in skip for p in parts)}
    embed = request.signals.embed
    if embed is not None:
        missing = list(index.missing_vectors(usable))
        if missing:
            texts = [
                units[m][0].text + "".join(p.sep + p.text for p in units[m][1:]) for m in missing
            ]
            index.add_vectors(dict(zip(missing, embed(texts))))
    check_deadline(request)
    found = retrieve(
        index,
        request.query,
        usable,
        embed=embed,
        min_relevance=min_relevance,
        second_pass=second_pass,
        deadline=lambda: check_deadline(request),
    )
    check_deadline(request)
    score = {m: s for m, s in found.fused.items() if found.relevance.get(m, 0.0) > min_relevance}
    hits = len(score)
    if neighbours > 0.0 and score:
        order = sorted(units)
        position = {m: i for i, m in enumerate(order)}
        for m, s in sorted(score.items(), key=lambda kv: -kv[1]):
            i = position[m]
            hit = units[m]
            for j in (i - 1, i + 1):
                if not 0 <= j < len(order):
                    continue
                n = order[j]
                if abs(n - m) != 1 or n not in usable or score.get(n, 0.0) >= neighbours * s:
                    continue
                other = units[n]
                asking = other if j < i else hit  # the earlier turn of the pair
                if _speaker(other[0]) != _speaker(hit[0]) and "?" in asking[-1].text:
                    score[n] = neighbours * s
    budget = request.budget
    keep: list[int] = []
    kept_messages = 0
    for m in sorted(score, key=lambda m: (-score[m], -m)):
        cost = sum(p.tokens for p in units[m])
        if cost <= budget:
            keep += [p.id for p in units[m]]
            budget -= cost
            kept_messages += 1
    return Selection(
        keep=tuple(keep),
        stats={
            "signal": found.signal,
            "recall": "fused" if found.signal == "model" else "lexical",
            "hits": hits,
            "kept": kept_messages,
            "kept_tokens": request.budget - budget,
            "expanded": len(found.second_pass),
        },
    )
