"""Sentence splitting in every script."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmai_multilingual import split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Dr. Smith paid $3.50. Then he left! Why?",
            ["Dr. Smith paid $3.50.", "Then he left!", "Why?"],
        ),
        ("I met J. R. R. Tolkien. He was kind.", ["I met J. R. R. Tolkien.", "He was kind."]),
        ("We need e.g. milk. And bread.", ["We need e.g. milk.", "And bread."]),
        ("Call me at 10.30 tonight. Thanks", ["Call me at 10.30 tonight.", "Thanks"]),
        (
            "Am 3. Oktober fahren wir z.B. nach Berlin. Das wird toll!",
            ["Am 3. Oktober fahren wir z.B. nach Berlin.", "Das wird toll!"],
        ),
        ("Он пришёл в 5 ч. утра. Т.е. очень рано.", ["Он пришёл в 5 ч. утра.", "Т.е. очень рано."]),
        ("你好。今天很忙！明天见？好的", ["你好。", "今天很忙！", "明天见？", "好的"]),
        ("「行くよ。」と彼は言った。またね！", ["「行くよ。」", "と彼は言った。", "またね！"]),
        ("好吗?我不知道", ["好吗?", "我不知道"]),
        ("هل أنت بخير؟ أنا بخير. شكرا", ["هل أنت بخير؟", "أنا بخير.", "شكرا"]),
        ("کیا آپ ٹھیک ہیں؟ میں ٹھیک ہوں۔ شکریہ", ["کیا آپ ٹھیک ہیں؟", "میں ٹھیک ہوں۔", "شکریہ"]),
        ("मैं घर पर हूँ। तुम कहाँ हो? ठीक है॥", ["मैं घर पर हूँ।", "तुम कहाँ हो?", "ठीक है॥"]),
        ("আমি বাড়িতে আছি। তুমি কোথায়?", ["আমি বাড়িতে আছি।", "তুমি কোথায়?"]),
        ("Είσαι καλά; Εγώ είμαι μια χαρά.", ["Είσαι καλά;", "Εγώ είμαι μια χαρά."]),
        ("Use a; b; c. Done.", ["Use a; b; c.", "Done."]),
        ("Ես տանն եմ։ Դու որտե՞ղ ես։", ["Ես տանն եմ։", "Դու որտե՞ղ ես։"]),
        ("first line\nsecond line", ["first line", "second line"]),
        ("", []),
    ],
)
def test_split(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_thai_splits_at_spaces_and_merges_short_pieces() -> None:
    text = "คืนนี้ว่างไปกินข้าวด้วยกันไหม รถไฟมาช้าอีกแล้ว ช้าไปยี่สิบนาที"
    assert split_sentences(text) == [
        "คืนนี้ว่างไปกินข้าวด้วยกันไหม",
        "รถไฟมาช้าอีกแล้ว",
        "ช้าไปยี่สิบนาที",
    ]
    # A short phrase ("ok na") is not a sentence of its own.
    assert split_sentences("โอเคนะ แล้วเจอกันพรุ่งนี้ตอนเช้า") == ["โอเคนะ แล้วเจอกันพรุ่งนี้ตอนเช้า"]


def test_language_selects_abbreviations() -> None:
    text = "Hablé con la Sra. López ayer. Todo bien."
    assert split_sentences(text, "es") == ["Hablé con la Sra. López ayer.", "Todo bien."]
    assert split_sentences(text) == ["Hablé con la Sra. López ayer.", "Todo bien."]
    # English rules do not know "Sra.", so the point before a capital ends a sentence.
    assert split_sentences(text, "en") == ["Hablé con la Sra.", "López ayer.", "Todo bien."]


@given(st.text(alphabet=st.sampled_from(list("ab .!?。！？।؟\n ก中")), max_size=80))
def test_keeps_every_character(text: str) -> None:
    pieces = split_sentences(text)
    assert "".join("".join(pieces).split()) == "".join(text.split())
    assert all(p and p == p.strip() for p in pieces)
