"""Torch-free text utilities: sentence splitting and word tokenisation.

These are the defaults; fmai-multilingual provides better ones for every script through the
[`SentenceSplitter`][fmai_core.backend.SentenceSplitter] protocol.
"""

from __future__ import annotations

import re

__all__ = ["split_sentences", "words"]

# Common abbreviations after which a period does not end a sentence.
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st vs etc e.g i.e inc ltd co corp dept fig no vol
    jan feb mar apr jun jul aug sep sept oct nov dec approx est min max""".split()
)
# A sentence ends at . ! ? followed by whitespace, or at CJK 。！？ (no space needed).
_BOUNDARY = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|(?<=[。！？])")
_WORD = re.compile(r"\w+", re.UNICODE)


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences, keeping abbreviations and decimals intact.

    Examples:
        >>> split_sentences("Dr. Smith paid $3.50. Then he left! Why?")
        ['Dr. Smith paid $3.50.', 'Then he left!', 'Why?']
    """
    pieces: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.start()
        candidate = text[start:end]
        last = candidate.rstrip(".!?\"')]").rsplit(maxsplit=1)
        if last and candidate.endswith(".") and last[-1].lower().rstrip(".") in _ABBREVIATIONS:
            continue
        if last and candidate.endswith(".") and len(last[-1]) == 1 and last[-1].isalpha():
            continue  # an initial such as "J. R. R. Tolkien"
        sentence = text[start : match.end()].strip()
        if sentence:
            pieces.append(sentence)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        pieces.append(tail)
    return pieces


def words(text: str) -> list[str]:
    """Return the lower-cased words of `text` (Unicode-aware)."""
    return [w.lower() for w in _WORD.findall(text)]
