"""Token estimates by script."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmai_core.errors import ConfigurationError
from fmai_multilingual import TOKENIZER_FAMILIES, estimate_tokens
from fmai_multilingual._token_data import FAMILIES
from fmai_multilingual.tokens import scripts_of, token_features


def test_families_are_fitted_for_every_benchmark_script() -> None:
    assert {"cl100k", "smollm2", "minilm"} <= set(TOKENIZER_FAMILIES)
    for weights in FAMILIES.values():
        scripts = scripts_of(weights)
        assert {"Latn", "Cyrl", "Arab", "Deva", "Hani", "Hang", "Thai", "Grek", "Hebr"} <= scripts
        assert weights.get("other.bytes", 0) + weights.get("other.words", 0) > 0


def test_blank_is_zero_and_text_is_positive() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens(" \n ") == 0
    assert estimate_tokens("a") >= 1


def test_scripts_cost_what_the_tokenizer_says() -> None:
    # The same short request: Thai and Tamil cost several times the English tokens
    # under cl100k (the measured ratios are in the benchmarks docs).
    english = estimate_tokens("can you send me the report before the meeting?")
    thai = estimate_tokens("ช่วยส่งรายงานให้ฉันก่อนเริ่มประชุมได้ไหม")
    tamil = estimate_tokens("கூட்டம் தொடங்குவதற்கு முன் அறிக்கையை எனக்கு அனுப்ப முடியுமா?")
    assert english < thai < tamil


def test_family_changes_the_estimate() -> None:
    korean = "회의 시작 전에 보고서 좀 보내줄 수 있어?"
    assert estimate_tokens(korean, "smollm2") > estimate_tokens(korean, "cl100k")


def test_unknown_script_uses_the_byte_fallback() -> None:
    features = token_features("ሰላም ነው", frozenset({"Latn"}))
    assert features["other.bytes"] == len("ሰላምነው".encode())
    assert estimate_tokens("ሰላም ነው ወንድሜ") >= 2


def test_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="cl100k"):
        estimate_tokens("hello", family="nope")


@given(st.text(max_size=40), st.text(max_size=40))
def test_monotone_under_concatenation(a: str, b: str) -> None:
    # Adding text never lowers the estimate by more than rounding.
    assert estimate_tokens(a + " " + b) >= estimate_tokens(a) - 1
