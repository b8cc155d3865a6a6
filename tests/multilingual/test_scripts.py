"""Scripts of characters and texts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fmai_multilingual.scripts import dominant_script, script_counts, script_of, script_runs


def test_script_of_characters() -> None:
    cases = {
        "a": "Latn", "é": "Latn", "ж": "Cyrl", "λ": "Grek", "ب": "Arab", "א": "Hebr",
        "क": "Deva", "ক": "Beng", "த": "Taml", "ก": "Thai", "ა": "Geor", "ա": "Armn",
        "한": "Hang", "あ": "Hira", "カ": "Kana", "ー": "Kana", "中": "Hani", "ሀ": "Ethi",
        "7": "Zyyy", "٣": "Zyyy", "。": "Zyyy", " ": "Zyyy", "👍": "Zyyy", "।": "Zyyy",
    }  # fmt: skip
    assert {c: script_of(c) for c in cases} == cases


def test_combining_marks_stay_with_their_letter() -> None:
    # Devanagari vowel signs and the Persian zero-width non-joiner are inside words.
    assert list(script_runs("क्या")) == [("Deva", "क्या")]
    assert list(script_runs("می‌تونی")) == [("Arab", "می‌تونی")]


def test_dominant_script() -> None:
    assert dominant_script("今夜ちょっと飲みに行かない？") == "Jpan"
    assert dominant_script("韓國語 한국어 공부") == "Kore"
    assert dominant_script("hello 你好") == "Latn"
    assert dominant_script("123 ...") == "Zyyy"


@given(st.text(max_size=60))
def test_runs_cover_the_text(text: str) -> None:
    assert "".join(run for _, run in script_runs(text)) == text
    assert sum(script_counts(text).values()) <= len(text)
