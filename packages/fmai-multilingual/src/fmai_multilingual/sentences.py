"""Sentence splitting for every script: the anchors of long messages.

Rules, by writing system (standard library only):

- **Spaced scripts** (Latin, Cyrillic, Greek, Arabic, Hebrew, Indic, ...): a sentence ends
  at `. ! ? …` followed by a space. Not after a known abbreviation (English, German,
  French, Spanish, Italian, Portuguese, Dutch, Russian, Polish and Czech lists), an initial
  (`J. R. R.`), a number followed by a lower-case word or a month (German ordinals:
  `am 3. Oktober`); decimals, times and links never contain a space after the point.
- **Their own marks**: Chinese and Japanese `。！？` (no space needed, closing quotes
  stay with the sentence), Arabic `؟` and Urdu `۔`, Hindi and Bengali `।` `॥`, Armenian
  `։`, Ethiopic `። ፧`, Myanmar `။`, Khmer `។ ៕`, Greek `;` (the Greek question mark).
- **Thai** writes no sentence punctuation: a space between Thai words marks a sentence or
  clause, so Thai text is cut at those spaces, merging pieces shorter than 12 characters.
- A line break always ends a sentence.

Every piece is a stripped substring, so joining them with spaces keeps every word.

Example:
    >>> split_sentences("Dr. Smith paid $3.50. Then he left! 你好。再见！")
    ['Dr. Smith paid $3.50.', 'Then he left!', '你好。', '再见！']
"""

from __future__ import annotations

import re

from fmai_multilingual.scripts import script_of

__all__ = ["ABBREVIATIONS", "split_sentences"]

#: Abbreviations (lower case, without the final point) after which a point ends nothing.
ABBREVIATIONS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        "en": "mr mrs ms dr prof sr jr st vs etc e.g i.e inc ltd co corp dept fig no vol "
        "approx est min max jan feb mar apr jun jul aug sep sept oct nov dec a.m p.m u.s",
        "de": "z.b bzw usw ca nr str hr fr dr prof vgl evtl ggf inkl bspw d.h u.a s.o jh tel",
        "fr": "m mme mlle p.ex cf env av bd st ste dr",
        "es": "sr sra srta dr dra ud uds p.ej av etc aprox núm tel",
        "it": "sig dott ecc es avv ing",
        "pt": "sr sra dr dra av p.ex etc",
        "nl": "bijv dhr mevr m.a.w o.a ca enz",
        "ru": "т.е т.д т.п г гг ул д им стр см напр др тел",
        "pl": "np itd itp tzn ul dr prof tj m.in tel",
        "cs": "např tzv atd apod ul č tel",
    }.items()
}
_ALL_ABBREVIATIONS = frozenset().union(*ABBREVIATIONS.values())
_MONTHS = frozenset(
    "januar februar märz april mai juni juli august september oktober november dezember".split()
)
# A run of terminal marks, closing quotes or brackets, then optional spaces.
_CANDIDATE = re.compile(
    r"[.!?…‼⁇⁈⁉;\u037e։።፧။។៕๚๛؟۔।॥。！？｡]+"
    r"[\"'”’»)\]）」』】〕〉》]*[ \t\u3000\u00a0]*"
)
_NO_SPACE_NEEDED = frozenset("。！？｡।॥։።፧။។៕๚๛؟۔")
_CJK_SCRIPTS = frozenset({"Hani", "Hira", "Kana"})
_THAI_SPACE = re.compile(r"(?<=[\u0e01-\u0e5b])[ \u00a0]+(?=[\u0e01-\u0e5b])")
_THAI_MIN = 12
_OPENING = "\"'“‘«(["


def split_sentences(text: str, language: str | None = None) -> list[str]:
    """Split `text` into sentences, whatever its script.

    Args:
        text: Any text.
        language: ISO 639-1 code, if known; it selects the abbreviation list (all lists
            apply when it is `None`).

    Returns:
        The sentences, stripped, in order; `[]` for blank text.
    """
    abbreviations = ABBREVIATIONS.get(language or "", _ALL_ABBREVIATIONS) | ABBREVIATIONS["en"]
    pieces: list[str] = []
    for line in text.splitlines():
        for sentence in _split_line(line, abbreviations, language):
            pieces.extend(_split_thai(sentence))
    return pieces


def _split_line(line: str, abbreviations: frozenset[str], language: str | None) -> list[str]:
    pieces: list[str] = []
    start = 0
    for match in _CANDIDATE.finditer(line):
        end = match.end()
        if end < len(line) and not _is_boundary(line, match, abbreviations, language):
            continue
        piece = line[start:end].strip()
        if piece:
            pieces.append(piece)
        start = end
    tail = line[start:].strip()
    if tail:
        pieces.append(tail)
    return pieces


def _is_boundary(
    line: str, match: re.Match[str], abbreviations: frozenset[str], language: str | None
) -> bool:
    marks = match.group().rstrip(" \t\u3000\u00a0")
    spaced = len(marks) < len(match.group())
    following = line[match.end()]
    if any(c in _NO_SPACE_NEEDED for c in marks):
        return True
    before = line[: match.start()].rsplit(maxsplit=1)
    word = before[-1] if before else ""
    if not spaced:
        # "好吗?我": an ASCII ! or ? right before Chinese or Japanese text.
        return bool(set(marks) & set("!?")) and script_of(following) in _CJK_SCRIPTS
    if set(marks) <= {";"}:
        # The Greek question mark looks like a semicolon.
        return language == "el" or (bool(word) and script_of(word[-1]) == "Grek")
    if marks.startswith((".", "…")) and not set(marks) & set("!?"):
        return not _protects(word, line[match.end() :], abbreviations, language)
    return True


def _protects(word: str, rest: str, abbreviations: frozenset[str], language: str | None) -> bool:
    """Whether the point after `word` is part of it (abbreviation, initial, ordinal)."""
    bare = word.lstrip(_OPENING).rstrip(".").lower()
    if bare in abbreviations:
        return True
    if len(bare) == 1 and bare.isalpha() and word[:1].isupper():
        return True  # an initial: "J. R. R. Tolkien"
    next_word = rest.split(maxsplit=1)[0] if rest.split() else ""
    starts_lower = next_word[:1].islower()
    if bare.isdigit() and (starts_lower or next_word.lower().strip(",.") in _MONTHS):
        return True  # "am 3. Oktober", "the 2. and 3. items"
    return starts_lower and ("." in bare or (len(bare) <= 3 and bare.isalpha() and bare.islower()))


def _split_thai(sentence: str) -> list[str]:
    if not _THAI_SPACE.search(sentence):
        return [sentence]
    parts = [p.strip() for p in _THAI_SPACE.split(sentence) if p.strip()]
    merged: list[str] = []
    for part in parts:
        if merged and len(merged[-1]) < _THAI_MIN:
            merged[-1] = f"{merged[-1]} {part}"
        else:
            merged.append(part)
    if len(merged) > 1 and len(merged[-1]) < _THAI_MIN:
        last = merged.pop()
        merged[-1] = f"{merged[-1]} {last}"
    return merged
