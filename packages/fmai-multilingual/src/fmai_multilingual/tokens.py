"""Token estimates by script, for backends without a tokenizer.

Tokenizers spend very different numbers of tokens on the same amount of meaning: a Thai or
Tamil sentence costs several times the tokens of its English translation, and the ratio
depends on the tokenizer. `estimate_tokens` counts, per script, the characters and words of
a text (plus digits, punctuation and symbols) and weighs them with constants **fitted
against real tokenizers** by `benchmarks/multilingual_tokens.py` (the figures and the error
per script are in the benchmarks docs). Only the standard library runs here.

Example:
    >>> from fmai_multilingual import estimate_tokens
    >>> estimate_tokens("") == 0 and estimate_tokens("hello there") > 0
    True
"""

from __future__ import annotations

import unicodedata
from collections import Counter

from fmai_core.errors import ConfigurationError
from fmai_multilingual._token_data import DEFAULT_FAMILY, FAMILIES
from fmai_multilingual.scripts import COMMON, INHERITED, script_runs

__all__ = ["TOKENIZER_FAMILIES", "estimate_tokens", "scripts_of", "token_features"]

#: Tokenizer families with fitted constants (see `_token_data.py`, written by the benchmark).
TOKENIZER_FAMILIES: tuple[str, ...] = tuple(FAMILIES)


def token_features(text: str, known: frozenset[str] | None = None) -> Counter[str]:
    """Count what the estimate weighs: characters and words per script, digits, marks.

    Args:
        text: Any text.
        known: Scripts that have their own constants; letters of any other script are
            counted as `other.bytes` (UTF-8 bytes) and `other.words`. `None`: every script
            is known.

    Returns:
        Counts keyed `"<Script>.chars"`, `"<Script>.words"`, `"Latn.nonascii"` (accented or
        non-ASCII Latin letters, which byte-level tokenizers split further), `"digits"`,
        `"punct"` (punctuation), `"symbols"` (symbols and emoji), `"other.bytes"`,
        `"other.words"`.
    """
    features: Counter[str] = Counter()
    for run_script, run in script_runs(text):
        if run_script == COMMON:
            for char in run:
                if char.isspace():
                    continue
                if char.isdigit():
                    features["digits"] += 1
                elif char.isalnum() or _is_punct(char):
                    features["punct"] += 1
                else:
                    features["symbols"] += 1
            continue
        script = "Zzzz" if run_script == INHERITED else run_script
        if known is not None and script not in known:
            features["other.bytes"] += len(run.encode("utf-8"))
            features["other.words"] += 1
            continue
        features[f"{script}.chars"] += len(run)
        features[f"{script}.words"] += 1
        if script == "Latn":
            features["Latn.nonascii"] += sum(not c.isascii() for c in run)
    return features


def _is_punct(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def estimate_tokens(text: str, family: str | None = None) -> int:
    """Estimate how many tokens `text` costs, without a tokenizer.

    The estimate aims at the real count of one tokenizer family (about half of all messages
    are under-counted a little). Not to be confused with fmai-core's
    [`fmai_core.backends.tokens.estimate_tokens`][fmai_core.backends.tokens.estimate_tokens],
    a deliberate over-count for OpenAI's encodings that the hosted backends fall back to, so
    that a prompt never overflows.

    Args:
        text: Any text, in any script or mix of scripts.
        family: Which fitted tokenizer family to imitate (`TOKENIZER_FAMILIES`); the default
            is `"cl100k"` (the GPT-4 tokenizer, typical of hosted APIs).

    Returns:
        The estimate, at least 1 for a text with any non-space character, 0 otherwise.

    Raises:
        ConfigurationError: `family` is not one of `TOKENIZER_FAMILIES`.
    """
    name = DEFAULT_FAMILY if family is None else family
    weights = FAMILIES.get(name)
    if weights is None:
        raise ConfigurationError(
            f"Unknown tokenizer family {name!r}: use one of {', '.join(TOKENIZER_FAMILIES)} "
            "(or count with the backend's own tokenizer when it has one)."
        )
    if not text or text.isspace():
        return 0
    known = _known_scripts(name)
    features = token_features(text, known)
    total = sum(weights.get(key, 0.0) * count for key, count in features.items())
    return max(1, round(total))


_KNOWN: dict[str, frozenset[str]] = {}


def scripts_of(weights: dict[str, float]) -> frozenset[str]:
    """The scripts that have their own constants in a family's `weights`."""
    return frozenset(k.split(".")[0] for k in weights if "." in k) - {"other"}


def _known_scripts(family: str) -> frozenset[str]:
    known = _KNOWN.get(family)
    if known is None:
        known = scripts_of(FAMILIES[family])
        _KNOWN[family] = known
    return known
