"""Information content: the torch-free proxy for what a model would attend to.

Without a model's attention scores, the `importance` and `hybrid` policies rank segments by
how much checkable, specific information they carry. For each text:

- **rarity**: the summed IDF of its distinct content terms *within the conversation*,
  divided by `sqrt(1 + terms)`, so rare words count and long rambling does not win by length;
- **specifics**: names, numbers and quoted strings (see [`claims`][fmai_core.fidelity.claims]),
  one point each, up to three;
- **self-disclosure**: a first-person statement ("my sister is...", "I live in...",
  "I'm allergic to...") that is not a question gets a bonus, because such statements are
  what a user later asks about;
- questions and short acknowledgements ("ok, thanks!") carry less.

The result is normalised to [0, 1] over the candidates. The same function scores sentences
for the extractive summary of `rolling_summary`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import repeat

from fmai_core.fidelity import claims
from fmai_core.memo import PER_SET_BYTES, PER_TEXT_BYTES, memo
from fmai_core.relevance.lexical import LexicalIndex, corpus_index, terms

__all__ = ["corpus_information", "information", "recency"]

_SELF = re.compile(
    r"\b(my|mine|i am|i'm|i was|i have|i've|i live|i work|i moved|i grew|i prefer|i love|"
    r"i hate|i like|i own|i study|i need|call me|we are|we live|our)\b",
    re.IGNORECASE,
)

# Weights of the parts of the score (before normalisation).
RARITY = 1.0
SPECIFICS = 0.6
SELF_DISCLOSURE = 1.2
QUESTION_FACTOR = 0.6


@memo(PER_TEXT_BYTES)
def _cues(text: str) -> tuple[int, bool, bool]:
    found = claims(text)
    specifics = min(3, found.count)
    stripped = text.rstrip()
    question = stripped.endswith("?")
    disclosure = bool(_SELF.search(text)) and not question
    return specifics, disclosure, question


def information(texts: Sequence[str], *, index: LexicalIndex | None = None) -> list[float]:
    """Score each text's information content in [0, 1] (see the module docs).

    Args:
        texts: The candidate texts.
        index: A [`LexicalIndex`][fmai_core.relevance.LexicalIndex] over `terms(text)` of the
            same texts, if the caller already built one.

    Examples:
        >>> s = information(["ok, thanks!", "My sister is called Ada.", "Nice weather today."])
        >>> max(range(3), key=s.__getitem__)
        1
    """
    if not texts:
        return []
    if index is None or index.size != len(texts):
        index = LexicalIndex([terms(t) for t in texts])
    idfs = index.idfs()
    unseen = index.idf("")  # the IDF of a term no document contains
    raw: list[float] = []
    for i, text in enumerate(texts):
        distinct = index.counts(i)
        rarity = sum(map(idfs.get, distinct, repeat(unseen, len(distinct))))
        rarity /= math.sqrt(1.0 + len(distinct))
        specifics, disclosure, question = _cues(text)
        score = RARITY * rarity + SPECIFICS * specifics + SELF_DISCLOSURE * disclosure
        if question:
            score *= QUESTION_FACTOR
        raw.append(score)
    top = max(raw)
    return [s / top for s in raw] if top > 0 else [0.0] * len(raw)


@memo(PER_SET_BYTES)
def corpus_information(texts: tuple[str, ...]) -> tuple[float, ...]:
    """[`information`][fmai_core.relevance.information] of `texts`, memoised like
    [`corpus_index`][fmai_core.relevance.corpus_index] (it does not depend on the query)."""
    return tuple(information(texts, index=corpus_index(texts)))


def recency(count: int, half_life: float) -> list[float]:
    """Recency prior for `count` items in conversation order: the newest scores 1.

    An item `d` places before the newest scores `0.5 ** (d / half_life)`.
    """
    if half_life <= 0:
        return [1.0 if i == count - 1 else 0.0 for i in range(count)]
    return [0.5 ** ((count - 1 - i) / half_life) for i in range(count)]
