"""`RecallIndex`: a conversation's messages, indexed incrementally for recall."""

from __future__ import annotations

import bisect
import math
import operator
import re
from array import array
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fmai_core.deadline import tick
from fmai_core.policy_api import EmbedFn
from fmai_core.relevance.lexical import STOPWORDS, terms
from fmai_core.segments import Segment

__all__ = ["RecallIndex", "entity_terms", "first_person", "message_text"]

# A term in more messages than this is scored over its newest postings only: the cost of
# a query stays bounded however long the conversation, and such a term's IDF is small.
SCAN_LIMIT = 128
# A long query (a whole message) is searched by its rarest terms: they carry its meaning,
# and the cost stays bounded.
QUERY_TERMS = 12
# Cosines are ranked over every stored embedding (a matrix product); this many of the best
# are fused.
COSINE_TOP = 256
# BM25 returns this many of its best matches: what ranking and recall do with them then
# costs what a query needs, not what the conversation holds (a query's common terms match
# up to SCAN_LIMIT messages each).
BM25_TOP = 256


def _bridge_df(n: int) -> float:
    """The most messages, of `n`, a bridging name may be in: a name that links two facts is
    rare, while one in many turns (a speaker's own name, a pet's) links everything."""
    return max(3.0, math.sqrt(n))


def message_text(parts: Sequence[Segment]) -> str:
    """The text of a message from its parts, verbatim (`Segment.sep` between them)."""
    return parts[0].text + "".join(p.sep + p.text for p in parts[1:])


def first_person(query: str, names: Collection[str]) -> str:
    """`query` with the conversation's speakers in the first person, as they speak of
    themselves: `"Caroline's"` becomes `"my"` and `"Caroline"` becomes `"I"`.

    A question about a speaker names them ("What kind of dog did Caroline adopt?"), while
    what they said is in their own words ("We brought home a beagle..."); BM25 matches the
    name through the message's speaker, and the embedding compares the rest. On the recall
    benchmark, MiniLM alone keeps 68.5% -> 78.2% of the questions at 5%, 81.1% -> 86.0% at
    10% (multi-hop 64.1% -> 62.1% there).

    Examples:
        >>> first_person("Where did Caroline's friend move?", {"Caroline"})
        'Where did my friend move?'
    """
    for name in sorted(names, key=len, reverse=True):  # "Ann Lee" before "Ann"
        if name in query:
            word = re.escape(name)
            query = re.sub(rf"\b{word}['\u2019]s\b", "my", query)
            query = re.sub(rf"\b{word}\b", "I", query)
    return query


def _meta_terms(segment: Segment) -> tuple[str, ...]:
    extra: list[str] = []
    for text in (segment.name, segment.timestamp):
        if text:
            extra += terms(text)
    return tuple(extra)


_ENTITY = re.compile(r"(?<![.!?]\s)(?<!^)(?<![.!?])\b([A-Z][\w'-]+|\d[\d:./-]*\d|\d{2,})")


# Capitalised, but common to many turns: they bridge nothing.
_CALENDAR = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday january february march april
    may june july august september october november december""".split()
)


def entity_terms(text: str) -> frozenset[str]:
    """The terms of `text` that name something: capitalised words inside a sentence (names,
    places, titles; not weekdays or months) and numbers. A second recall pass grows its
    query with these."""
    found: set[str] = set()
    for match in _ENTITY.finditer(text):
        word = match.group(1)
        if word.lower() not in _CALENDAR:
            found.update(terms(word))
    return frozenset(found)


@dataclass(frozen=True)
class _Doc:
    counts: Mapping[str, int]
    length: int
    entities: frozenset[str] = frozenset()


class RecallIndex:
    """An incremental index of a conversation's messages: BM25 postings and embeddings.

    The engine keeps one per conversation and adds each message as it enters memory, so
    recall never re-indexes the archive: a query costs what its terms match (bounded by
    `SCAN_LIMIT` postings for a term that is everywhere), not what the archive holds. A
    message is one document: its content terms plus its speaker's name and its date.
    Structures only grow, or are replaced whole (`forget`, `prune`), so a policy worker
    abandoned past its deadline may read them while the engine adds the next turn.

    Args:
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.

    Attributes:
        embedder: Identity of the embedder whose vectors are stored (checkpoints keep the
            vectors only under it).
    """

    def __init__(self, *, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self.embedder: str | None = None
        self._docs: dict[int, _Doc] = {}
        self._names: set[str] = set()  # the speakers' names, for `first_person`
        self._lengths: dict[int, int] = {}  # each message's length in terms, for BM25's loop
        self._postings: dict[str, list[tuple[int, int]]] = {}
        self._total_length = 0
        self._vectors: dict[int, array[float]] = {}
        self._rows: list[int] = []  # message id of each matrix row
        self._matrix: Any = None  # numpy array with spare capacity, when numpy is there
        self._queries: dict[str, array[float]] = {}
        self._views: list[tuple[object, Any]] = []
        # (candidates, made from, added, dropped): how the planner made each recent archive
        self._lineage: list[tuple[object, object, tuple[Segment, ...], tuple[Segment, ...]]] = []
        # the last query's BM25: (key, scores, the matches best first once asked for)
        self._scored: list[Any] | None = None
        self._epoch = 0  # changed by `forget`: a score of the index before is not reused

    @property
    def size(self) -> int:
        """Messages indexed."""
        return len(self._docs)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._docs

    # -- building ---------------------------------------------------------------------------
    def add(self, segments: Iterable[Segment], embed: EmbedFn | None = None) -> None:
        """Index the messages of `segments` that are not indexed yet.

        Args:
            segments: Segments in conversation order; the parts of a message arrive together.
            embed: Embeds the new messages' texts, in one batch, when given.
        """
        grouped: dict[int, list[Segment]] = {}
        for s in segments:
            if s.kind in ("message", "part") and s.message_id not in self._docs:
                grouped.setdefault(s.message_id, []).append(s)
        texts: dict[int, str] = {}
        for mid, parts in grouped.items():
            texts[mid] = self._add_doc(mid, parts)
        todo = {m: t for m, t in texts.items() if m not in self._vectors}  # restored ones
        if embed is not None and todo:
            self.add_vectors(dict(zip(todo, embed(list(todo.values())))))

    def _add_doc(self, mid: int, parts: Sequence[Segment]) -> str:
        """Index message `mid` from its parts; return its text. Postings stay in message
        order (a message indexed again after older ones goes in its place)."""
        text = message_text(parts)
        doc_terms = (*terms(text), *_meta_terms(parts[0]))
        counts = Counter(doc_terms)
        for term, tf in counts.items():
            postings = self._postings.setdefault(term, [])
            if postings and postings[-1][0] > mid:
                bisect.insort(postings, (mid, tf))
            else:
                postings.append((mid, tf))
        self._total_length += len(doc_terms)
        self._docs[mid] = _Doc(counts, len(doc_terms), entity_terms(text))
        self._lengths[mid] = len(doc_terms)
        if parts[0].name:
            self._names.add(parts[0].name)
        return text

    def forget(
        self, message_ids: Collection[int], left: Mapping[int, Sequence[Segment]] | None = None
    ) -> None:
        """Forget messages a full archive dropped, and index again from `left` (their parts
        still in memory, by message id) those it dropped only parts of.

        The index is then what one built from the record alone holds (what `load` builds),
        at the cost of the messages' terms, not of the index. An embedding of a message
        indexed again is kept (it was computed for the message, as a checkpoint keeps it).
        Posting lists are replaced, not changed in place: a policy worker abandoned past its
        deadline may still read them.
        """
        left = left or {}
        for mid in message_ids:
            doc = self._docs.pop(mid, None)
            if doc is None:
                continue
            del self._lengths[mid]
            self._total_length -= doc.length
            for term in doc.counts:
                postings = self._postings[term]
                at = bisect.bisect_left(postings, (mid, -1))
                if at < len(postings) and postings[at][0] == mid:
                    rest = postings[:at] + postings[at + 1 :]
                else:  # not in message order after all: look it up
                    rest = [p for p in postings if p[0] != mid]
                if rest:
                    self._postings[term] = rest
                else:
                    del self._postings[term]
            if mid not in left and mid in self._vectors:
                del self._vectors[mid]
                self._rows = [m for m in self._rows if m != mid]
                self._matrix = None
        for mid in sorted(left):
            if mid in message_ids and left[mid]:
                self._add_doc(mid, left[mid])
        self._scored = None
        self._epoch += 1

    def add_vectors(self, vectors: Mapping[int, Sequence[float]]) -> None:
        """Store message embeddings (normalised to unit length).

        A vector that holds a non-finite value, or whose length differs from the stored
        ones', is not kept (an embedder's NaN, or a broken one): its message is found by
        its words alone, and what is saved can always be loaded.
        """
        replaced = False
        dim = len(next(iter(self._vectors.values()))) if self._vectors else None
        for mid, vec in vectors.items():
            if not len(vec) or (dim is not None and len(vec) != dim):
                continue
            unit = _unit(vec)  # a NaN or an infinity anywhere makes NaNs of it
            if not all(math.isfinite(x) for x in unit):
                continue
            dim = len(unit)
            if mid in self._vectors:
                replaced = True
            else:
                self._rows.append(mid)
            self._vectors[mid] = unit
        if replaced or self._matrix is None:
            self._matrix = None  # built again on the next query
        else:
            self._matrix = self._grow(self._matrix)

    def vectors(self) -> Mapping[int, array[float]]:
        """The stored embeddings by message id (read-only)."""
        return self._vectors

    def prune(self, live: Collection[int]) -> None:
        """Forget messages outside `live` (dropped from a full archive)."""
        gone = {m for m in self._docs if m not in live}
        if not gone:
            return
        docs = {m: d for m, d in self._docs.items() if m not in gone}
        postings: dict[str, list[tuple[int, int]]] = {}
        for mid, doc in docs.items():
            for term, tf in doc.counts.items():
                postings.setdefault(term, []).append((mid, tf))
        self._docs, self._postings = docs, postings
        self._lengths = {m: d.length for m, d in docs.items()}
        self._total_length = sum(d.length for d in docs.values())
        self._vectors = {m: v for m, v in self._vectors.items() if m not in gone}
        self._rows = [m for m in self._rows if m not in gone]
        self._matrix = None
        self._views.clear()
        self._lineage.clear()
        self._scored = None

    # -- scoring ----------------------------------------------------------------------------
    def df(self, term: str) -> int:
        """Messages that hold `term`."""
        return len(self._postings.get(term, ()))

    def idf(self, term: str) -> float:
        """BM25 inverse document frequency over every indexed message."""
        df = len(self._postings.get(term, ()))
        n = len(self._docs)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def mass(self, query: Mapping[str, float]) -> float:
        """The weighted IDF of the query terms `bm25` uses (BM25's scale)."""
        postings = self._postings
        known = sorted((t for t in query if t in postings), key=lambda t: len(postings[t]))
        return sum(self.idf(t) * query[t] for t in known[:QUERY_TERMS])

    def bm25(
        self,
        query: Mapping[str, float],
        among: Collection[int] | None = None,
        top: int | None = BM25_TOP,
    ) -> dict[int, float]:
        """BM25 of the best `top` matching messages (of `among`, or all) for weighted terms.

        Terms are taken rarest first, at most `QUERY_TERMS` of them; each adds to the
        messages of its newest `SCAN_LIMIT` postings (all of them for all but the commonest
        terms). Of the matches, the `top` best come back (`None`: all; ties go to the newer
        message).
        """
        key = (tuple(sorted(query.items())), len(self._docs), self._total_length, self._epoch)
        if not (self._scored and self._scored[0] == key):
            self._scored = [key, self._bm25(query), None]
        scores: dict[int, float] = self._scored[1]
        if top is None or len(scores) <= top:  # nothing to cut
            if among is None:
                return dict(scores)
            return {m: x for m, x in scores.items() if m in among}
        ranked = self._scored[2]
        if ranked is None:  # sorted once per query, in C; each caller then takes its best
            ranked = self._scored[2] = sorted(zip(scores.values(), scores.keys()), reverse=True)
        out: dict[int, float] = {}
        for x, m in ranked:
            if among is None or m in among:
                out[m] = x
                if len(out) >= top:
                    break
        return out

    def _bm25(self, query: Mapping[str, float]) -> dict[int, float]:
        out: dict[int, float] = {}
        docs, postings, lengths = self._docs, self._postings, self._lengths
        avg = (self._total_length / len(docs)) if docs else 1.0
        k1, b = self.k1, self.b
        # norm = k1 * (1 - b + b * length / avg), as base + per_token * length
        base, per_token = k1 * (1.0 - b), k1 * b / avg
        get = out.get
        known = sorted((t for t in query if t in postings), key=lambda t: len(postings[t]))
        for term in known[:QUERY_TERMS]:
            tick()
            weight = self.idf(term) * query[term] * (k1 + 1.0)
            for mid, tf in postings[term][-SCAN_LIMIT:]:
                out[mid] = get(mid, 0.0) + weight * tf / (tf + base + per_token * lengths[mid])
        return out

    def cosines(
        self, vector: Sequence[float], among: Collection[int] | None = None, top: int = COSINE_TOP
    ) -> dict[int, float]:
        """The `top` best cosines of `vector` with stored embeddings (of `among`, or all);
        none for a vector of another length, or with a non-finite value (see `add_vectors`)."""
        if not self._rows:
            return {}
        dim = len(self._vectors[self._rows[0]])
        if len(vector) != dim or not all(math.isfinite(float(x)) for x in vector):
            return {}
        try:
            import numpy as np  # noqa: TID251 - lazy: numpy is there wherever a model embeds
        except ImportError:
            sims = [(sum(map(operator.mul, vector, self._vectors[m])), m) for m in self._rows]
            sims.sort(reverse=True)
            return {m: s for s, m in sims if among is None or m in among}  # small archives
        if self._matrix is None:
            self._matrix = self._grow(None)
        n = len(self._rows)
        sims_all = self._matrix[:n] @ np.asarray(vector, dtype=np.float32)
        order = np.argsort(-sims_all, kind="stable")
        out: dict[int, float] = {}
        for i in order.tolist():
            m = self._rows[i]
            if among is None or m in among:
                out[m] = float(sims_all[i])
                if len(out) >= top:
                    break
        return out

    def _grow(self, matrix: Any) -> Any:
        """The embedding matrix holding every row, with spare capacity (amortised growth)."""
        import numpy as np  # noqa: TID251 - lazy

        n = len(self._rows)
        have = 0 if matrix is None else getattr(self, "_filled", 0)
        if matrix is None or matrix.shape[0] < n:
            dim = len(self._vectors[self._rows[0]])
            bigger = np.zeros((max(64, 2 * n), dim), dtype=np.float32)
            if matrix is not None:
                bigger[:have] = matrix[:have]
            matrix = bigger
        for i in range(have, n):
            matrix[i] = self._vectors[self._rows[i]]
        self._filled = n
        return matrix

    def query_vector(self, query: str, embed: EmbedFn) -> array[float]:
        """The unit embedding of `query`, the speakers in the first person (see
        [`first_person`][fmai_core.retrieval.index.first_person]), memoised for the last few
        queries."""
        text = first_person(query, self._names)
        vec = self._queries.get(text)
        if vec is None:
            vec = _unit(embed([text])[0])
            if len(self._queries) >= 8:
                self._queries.pop(next(iter(self._queries)))
            self._queries[text] = vec
        return vec

    def top_terms(self, message_ids: Iterable[int], exclude: Collection[str], n: int) -> list[str]:
        """The `n` rarest entity terms (names, places, numbers) of the messages, outside
        `exclude` (see [`entity_terms`][fmai_core.retrieval.index.entity_terms]), and in at
        most the square root of the indexed messages (at least 3)."""
        weights: dict[str, float] = {}
        cap = _bridge_df(len(self._docs))
        for mid in message_ids:
            doc = self._docs.get(mid)
            if doc is None:
                continue
            for term in doc.entities:
                if term not in exclude and term not in STOPWORDS and self.df(term) <= cap:
                    weights[term] = self.idf(term)
        return sorted(weights, key=lambda t: (-weights[t], t))[:n]

    def view(self, candidates: Sequence[Segment], build: Any) -> Any:
        """`build(candidates, previous[, delta])`, memoised for the last few candidate sets.

        Candidate sets are told apart by identity: the archive stays the same object from
        one eviction to the next, so what recall derives from it alone (messages by id,
        their order) is built once per eviction, from the previous one (`previous`, the
        last view built, or `None`). When the planner said how it made `candidates` from a
        set whose view is kept (`derive`), `previous` is that view and `delta` is
        `(added, dropped)`, so the build costs what changed, not the archive's size.
        """
        for obj, value in self._views:
            if obj is candidates:
                return value
        previous = self._views[0][1] if self._views else None
        delta = None
        for new, old, added, dropped in self._lineage:
            if new is candidates:
                base = next((v for obj, v in self._views if obj is old), None)
                if base is not None:
                    previous, delta = base, (added, dropped)
                break
        value = build(candidates, previous) if delta is None else build(candidates, previous, delta)
        self._views.insert(0, (candidates, value))
        del self._views[4:]
        return value

    def derive(
        self,
        candidates: Sequence[Segment],
        source: Sequence[Segment],
        added: Sequence[Segment],
        dropped: Sequence[Segment] = (),
    ) -> None:
        """Note that `candidates` is `source` plus `added` minus `dropped` (the planner's
        new archive), so that its `view` is built from `source`'s by the change alone."""
        self._lineage.insert(0, (candidates, source, tuple(added), tuple(dropped)))
        del self._lineage[8:]

    # -- persistence ------------------------------------------------------------------------
    def vectors_to_dict(self) -> dict[str, Any] | None:
        """The embeddings as JSON-ready data (base64 float32), or `None` when there are none."""
        if not self._vectors or self.embedder is None:
            return None
        import base64
        import sys

        dim = len(next(iter(self._vectors.values())))
        out: dict[str, str] = {}
        for m, v in sorted(self._vectors.items()):
            values = array("f", v)  # a copy: byteswap must not touch the stored vector
            if sys.byteorder != "little":
                values.byteswap()
            out[str(m)] = base64.b64encode(values.tobytes()).decode("ascii")
        return {"embedder": self.embedder, "dimensions": dim, "vectors": out}

    def load_vectors(self, data: Mapping[str, Any]) -> int:
        """Restore embeddings saved by `vectors_to_dict` if they come from this `embedder`.

        Returns:
            How many vectors were restored (0 when the embedder differs).

        Raises:
            ValueError: the data is malformed.
        """
        import base64
        import binascii
        import sys

        if self.embedder is None or data.get("embedder") != self.embedder:
            return 0
        dim = int(data["dimensions"])
        out: dict[int, array[float]] = {}
        for key, blob in dict(data["vectors"]).items():
            values = array("f")
            try:
                values.frombytes(base64.b64decode(blob, validate=True))
            except (binascii.Error, ValueError, TypeError) as exc:
                raise ValueError(f"embedding of message {key} is not base64 float32") from exc
            if sys.byteorder != "little":
                values.byteswap()
            if len(values) != dim:
                raise ValueError(f"embedding of message {key} is not {dim} values")
            out[int(key)] = values  # a non-finite one is not kept (`add_vectors`)
        self.add_vectors(out)
        return len(out)


def _unit(vector: Sequence[float]) -> array[float]:
    norm = math.sqrt(sum(float(x) * float(x) for x in vector)) or 1.0
    return array("f", [float(x) / norm for x in vector])
