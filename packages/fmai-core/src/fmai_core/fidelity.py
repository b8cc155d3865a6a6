"""The fidelity gate: a summary may only state numbers, names and quotes found in its source.

A model-written summary can invent a detail ("your sister Ava", "the code 4812"). The gate
extracts the checkable claims of the summary and looks each one up in the source text:

- **numbers**: any run of digits (`4,821`, `3.5`, `2024`); separators are ignored, so
  `4821` and `4,821` match;
- **names**: capitalised words that do not start a sentence (a proper-noun heuristic), plus
  sentence-initial capitalised words that also appear capitalised mid-sentence elsewhere in
  the summary; `I` and its contractions are ignored; the lookup is case-insensitive and
  whole-word;
- **quotes**: text in double quotes (`"..."`, `“...”`), matched case-insensitively with
  whitespace normalised.

The heuristic is torch-free and deliberately strict: a summary that paraphrases a name into
a different spelling fails, and the caller falls back to an extractive summary.

Examples:
    >>> check_fidelity("Ada lives in Porto.", "My sister Ada lives in Porto.").passed
    True
    >>> report = check_fidelity("Her sister Eva lives in Porto.", "My sister Ada lives in Porto.")
    >>> report.unsupported
    ('Eva',)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fmai_core.memo import PER_TEXT_BYTES, memo
from fmai_core.text import split_sentences

__all__ = ["Claims", "FidelityReport", "check_fidelity", "claims"]

_NUMBER = re.compile(r"\d(?:[\d,._:/-]*\d)?")
_TOKEN = re.compile(r"[^\W\d_][\w'’-]*", re.UNICODE)
_QUOTE = re.compile(r"\"([^\"]{1,200})\"|“([^”]{1,200})”")
_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")
_NOT_NAMES = frozenset({"I", "I'm", "I've", "I'll", "I'd", "OK", "Ok"})


@dataclass(frozen=True)
class Claims:
    """The checkable claims of a text.

    Attributes:
        numbers: Digit strings with separators removed, in order of appearance.
        names: Proper-noun candidates (see the module docs).
        quotes: Quoted strings, whitespace normalised.
    """

    numbers: tuple[str, ...]
    names: tuple[str, ...]
    quotes: tuple[str, ...]

    @property
    def count(self) -> int:
        """Number of claims."""
        return len(self.numbers) + len(self.names) + len(self.quotes)


@dataclass(frozen=True)
class FidelityReport:
    """The verdict of [`check_fidelity`][fmai_core.fidelity.check_fidelity].

    Attributes:
        passed: `True` when every claim of the summary is found in the source.
        checked: Number of claims checked.
        unsupported: The claims not found in the source, in order of appearance.
    """

    passed: bool
    checked: int
    unsupported: tuple[str, ...]


def _digits(number: str) -> str:
    return re.sub(r"[,._:/-]", "", number)


def _clean(word: str) -> str:
    return word.rstrip("'’-").removesuffix("'s").removesuffix("’s")


@memo(PER_TEXT_BYTES)
def claims(text: str) -> Claims:
    """Extract the numbers, names and quotes of `text` (see the module docs).

    Examples:
        >>> claims('On Monday my friend Ada said "see you at 7:30" in Porto.')
        Claims(numbers=('730',), names=('Monday', 'Ada', 'Porto'), quotes=('see you at 7:30',))
    """
    numbers = tuple(_digits(m) for m in _NUMBER.findall(text))
    quotes = tuple(
        _SPACE.sub(" ", (a or b).strip()) for a, b in _QUOTE.findall(text) if (a or b).strip()
    )
    mid: list[str] = []
    initial: list[str] = []
    for sentence in split_sentences(text):
        for i, match in enumerate(_TOKEN.finditer(sentence)):
            if not match.group()[0].isupper():
                continue
            word = _clean(match.group())
            if word in _NOT_NAMES:
                continue
            (initial if i == 0 else mid).append(word)
    seen = set(mid)
    names = [w for w in (*initial, *mid) if w in seen]
    ordered = tuple(dict.fromkeys(names))
    return Claims(numbers=numbers, names=ordered, quotes=quotes)


def check_fidelity(summary: str, source: str) -> FidelityReport:
    """Check that every number, name and quote of `summary` appears in `source`.

    Args:
        summary: The text to check (a model-written summary).
        source: The text it must be faithful to.

    Returns:
        A [`FidelityReport`][fmai_core.fidelity.FidelityReport]; `passed` is `True` for a
        summary with no checkable claim.
    """
    found = claims(summary)
    source_numbers = {_digits(m) for m in _NUMBER.findall(source)}
    source_words = {w.lower() for w in _WORD.findall(source)}
    source_flat = _SPACE.sub(" ", source).lower()
    unsupported: list[str] = []
    for number in found.numbers:
        if number not in source_numbers:
            unsupported.append(number)
    for name in found.names:
        parts = [p.lower() for p in _WORD.findall(name)]
        if not parts or not all(p in source_words for p in parts):
            unsupported.append(name)
    for quote in found.quotes:
        if quote.lower() not in source_flat:
            unsupported.append(f'"{quote}"')
    unique = tuple(dict.fromkeys(unsupported))
    return FidelityReport(passed=not unique, checked=found.count, unsupported=unique)
