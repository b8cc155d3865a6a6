"""Writing systems: the ISO 15924 script of each character, and of a text.

Everything here is the standard library (`unicodedata`): a character's Unicode name starts
with its block's script ("LATIN SMALL LETTER A", "CJK UNIFIED IDEOGRAPH-4F60", "THAI
CHARACTER KO KAI"), which maps to an ISO 15924 code. Combining marks take the script of the
letter they attach to; digits, spaces and punctuation are `"Zyyy"` (common).

Example:
    >>> from fmai_multilingual.scripts import dominant_script, script_of
    >>> script_of("ж"), script_of("ก"), script_of("7")
    ('Cyrl', 'Thai', 'Zyyy')
    >>> dominant_script("Привет, как дела?")
    'Cyrl'
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache

__all__ = ["COMMON", "SCRIPT_NAMES", "dominant_script", "script_counts", "script_of", "script_runs"]

COMMON = "Zyyy"
INHERITED = "Zinh"

# First word(s) of a Unicode character name -> ISO 15924 code. Han and kana are kept apart
# here ("Hani", "Hira", "Kana"); `text_script` in detect.py folds them into Jpan/Hans/Hant.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("LATIN", "Latn"),
    ("FULLWIDTH LATIN", "Latn"),
    ("CYRILLIC", "Cyrl"),
    ("GREEK", "Grek"),
    ("ARABIC", "Arab"),
    ("HEBREW", "Hebr"),
    ("DEVANAGARI", "Deva"),
    ("BENGALI", "Beng"),
    ("GURMUKHI", "Guru"),
    ("GUJARATI", "Gujr"),
    ("ORIYA", "Orya"),
    ("TAMIL", "Taml"),
    ("TELUGU", "Telu"),
    ("KANNADA", "Knda"),
    ("MALAYALAM", "Mlym"),
    ("SINHALA", "Sinh"),
    ("THAI", "Thai"),
    ("LAO", "Laoo"),
    ("TIBETAN", "Tibt"),
    ("MYANMAR", "Mymr"),
    ("KHMER", "Khmr"),
    ("GEORGIAN", "Geor"),
    ("ARMENIAN", "Armn"),
    ("ETHIOPIC", "Ethi"),
    ("HANGUL", "Hang"),
    ("HIRAGANA", "Hira"),
    ("KATAKANA", "Kana"),
    ("HALFWIDTH KATAKANA", "Kana"),
    ("HALFWIDTH HANGUL", "Hang"),
    ("CJK UNIFIED IDEOGRAPH", "Hani"),
    ("CJK COMPATIBILITY IDEOGRAPH", "Hani"),
    ("IDEOGRAPHIC ITERATION MARK", "Hani"),
    ("THAANA", "Thaa"),
    ("SYRIAC", "Syrc"),
    ("MONGOLIAN", "Mong"),
    ("CHEROKEE", "Cher"),
    ("CANADIAN SYLLABICS", "Cans"),
    ("TIFINAGH", "Tfng"),
    ("NKO", "Nkoo"),
    ("BOPOMOFO", "Bopo"),
    ("YI SYLLABLE", "Yiii"),
    ("JAVANESE", "Java"),
    ("BALINESE", "Bali"),
)

#: English names of the scripts fmai knows, by ISO 15924 code.
SCRIPT_NAMES: dict[str, str] = {
    "Latn": "Latin", "Cyrl": "Cyrillic", "Grek": "Greek", "Arab": "Arabic",
    "Hebr": "Hebrew", "Deva": "Devanagari", "Beng": "Bengali", "Guru": "Gurmukhi",
    "Gujr": "Gujarati", "Orya": "Oriya", "Taml": "Tamil", "Telu": "Telugu",
    "Knda": "Kannada", "Mlym": "Malayalam", "Sinh": "Sinhala", "Thai": "Thai",
    "Laoo": "Lao", "Tibt": "Tibetan", "Mymr": "Myanmar", "Khmr": "Khmer",
    "Geor": "Georgian", "Armn": "Armenian", "Ethi": "Ethiopic", "Hang": "Hangul",
    "Kore": "Korean (Hangul + Han)", "Hira": "Hiragana", "Kana": "Katakana",
    "Jpan": "Japanese (Han + kana)", "Hani": "Han", "Hans": "Han (Simplified)",
    "Hant": "Han (Traditional)", "Thaa": "Thaana", "Syrc": "Syriac", "Mong": "Mongolian",
    "Cher": "Cherokee", "Cans": "Canadian Syllabics", "Tfng": "Tifinagh", "Nkoo": "N'Ko",
    "Bopo": "Bopomofo", "Yiii": "Yi", "Java": "Javanese", "Bali": "Balinese",
    "Zyyy": "Common (digits, punctuation, symbols)", "Zinh": "Inherited (combining marks)",
    "Zzzz": "Unknown",
}  # fmt: skip

_SOUND_MARK = "\u30fc"  # KATAKANA-HIRAGANA PROLONGED SOUND MARK
_JOINERS = frozenset("\u200c\u200d")  # zero-width (non-)joiners live inside words


@lru_cache(maxsize=8192)
def script_of(char: str) -> str:
    """Return the ISO 15924 code of one character.

    Letters and combining signs of a script get its code; combining marks with no script of
    their own (and zero-width joiners) get `"Zinh"`; digits, spaces, punctuation and symbols
    get `"Zyyy"`; letters of a script fmai does not know get `"Zzzz"`.
    """
    if char.isascii():
        return "Latn" if char.isalpha() else COMMON
    if char in _JOINERS:
        return INHERITED
    category = unicodedata.category(char)
    if category[0] not in "LM":
        return COMMON
    if char == _SOUND_MARK:
        return "Kana"
    name = unicodedata.name(char, "")
    for prefix, code in _PREFIXES:
        if name.startswith(prefix):
            return code
    return INHERITED if category[0] == "M" else "Zzzz"


def script_runs(text: str) -> Iterator[tuple[str, str]]:
    """Yield `(script, run)` for maximal runs of characters of one script.

    Combining marks join the run before them; common characters (spaces, digits,
    punctuation) form runs of their own with script `"Zyyy"`.
    """
    current = ""
    start = 0
    for i, char in enumerate(text):
        script = script_of(char)
        if script == INHERITED and current:
            continue
        if script != current:
            if current:
                yield current, text[start:i]
            current, start = script, i
    if current:
        yield current, text[start:]


def script_counts(text: str) -> Counter[str]:
    """Count the characters of each script in `text`, common characters excluded."""
    counts: Counter[str] = Counter()
    for script, run in script_runs(text):
        if script != COMMON:
            counts[script] += len(run)
    return counts


def dominant_script(text: str) -> str:
    """Return the script with most characters in `text` (`"Zyyy"` when it has no letters).

    Han and kana count together as `"Jpan"` when any kana is present, Hangul and Han as
    `"Kore"`; see [`detect`][fmai_multilingual.detect] for Simplified/Traditional Han.
    """
    counts = script_counts(text)
    if not counts:
        return COMMON
    kana = counts.pop("Hira", 0) + counts.pop("Kana", 0)
    if kana:
        counts["Jpan"] = kana + counts.pop("Hani", 0)
    elif counts.get("Hang") and counts.get("Hani"):
        counts["Kore"] = counts.pop("Hang") + counts.pop("Hani")
    counts.pop("Zinh", None)
    if not counts:
        return COMMON
    return max(sorted(counts), key=lambda s: counts[s])
