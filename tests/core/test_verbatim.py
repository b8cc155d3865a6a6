"""Messages come back verbatim: split parts rejoin exactly, and recalled turns carry metadata."""

from __future__ import annotations

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.context import ContextBuilder
from fmai_core.memory import segment_message
from fmai_core.segments import Segment
from fmai_core.testing import EchoBackend
from fmai_core.text import split_sentences
from fmai_core.tokens import TokenCounter

LONG = (
    "First line of a long note.\n\nSecond paragraph, with  two spaces. "
    + " ".join(f"Sentence number {i} says something about item {i}." for i in range(30))
    + "\nLast line."
)


def test_split_parts_rejoin_verbatim() -> None:
    counter = TokenCounter(EchoBackend())
    parts = segment_message(
        "user",
        LONG,
        counter=counter,
        splitter=split_sentences,
        max_tokens=16,
        first_id=0,
        message_id=0,
        turn=0,
    )
    assert len(parts) > 3
    text = parts[0].text + "".join(p.sep + p.text for p in parts[1:])
    assert text == LONG.strip()
    assert all(p.to_dict() == Segment.from_dict(p.to_dict()).to_dict() for p in parts)


def test_history_renders_a_split_message_verbatim() -> None:
    llm = FiniteMemoryLLM(EchoBackend(), policy="sliding", max_tokens=4096, max_new_tokens=16)
    llm.extend([Message("user", LONG), Message("assistant", "Noted.")])
    prompt = "\n".join(m.content for m in llm.context("ok?"))
    assert LONG.strip() in prompt


def test_recalled_message_carries_speaker_and_date() -> None:
    seg = Segment(3, 3, "user", "I adopted a beagle.", 6, name="Caroline", timestamp="8 May 2023")
    text = ContextBuilder().user_text([seg], "What pet does she have?")
    assert "[8 May 2023] Caroline: I adopted a beagle." in text
    assert text.endswith("What pet does she have?")
    plain = Segment(4, 4, "assistant", "Nice!", 3)
    assert "assistant: Nice!" in ContextBuilder().user_text([plain], "q")


# -- property: the prompt shows every message as written -----------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PIECES = st.sampled_from(
    [" ", "  ", "\n", "\n\n", "\t", "\r\n", "```", "```python\n", "    ", "- ", "1. ", ". ", "? ",
     "! ", "word", "Sentence.", "Ada", "42", "日本語", "これは文です。", "中文句子。", "😀",
     "🎉🎉", "é", "ß", "\u200b", "'", '"', "(", ")", "x = 1", "\u00a0"]
)  # fmt: skip
_TEXT = st.lists(st.one_of(_PIECES, st.text(min_size=1, max_size=6)), min_size=1, max_size=60)
_TEXTS = _TEXT.map("".join).filter(lambda t: bool(t.strip()))
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@_SETTINGS
@given(_TEXTS.filter(_encodable), st.integers(min_value=8, max_value=24))
def test_split_parts_rejoin_byte_for_byte(text: str, segment_tokens: int) -> None:
    parts = segment_message(
        "user",
        text,
        counter=TokenCounter(EchoBackend()),
        splitter=split_sentences,
        max_tokens=segment_tokens,
        first_id=0,
        message_id=0,
        turn=0,
    )
    assert parts[0].text + "".join(p.sep + p.text for p in parts[1:]) == text
    restored = [Segment.from_dict(p.to_dict()) for p in parts]
    assert restored[0].text + "".join(p.sep + p.text for p in restored[1:]) == text


@_SETTINGS
@given(st.lists(_TEXTS.filter(_encodable), min_size=1, max_size=6), _TEXTS.filter(_encodable))
def test_rendered_history_equals_the_messages(history: list[str], new: str) -> None:
    """Newlines, tabs, code blocks, CJK, emoji, leading and trailing whitespace: the prompt
    holds each message exactly as written, split or not, and the new message is the last
    text of the final user turn."""
    llm = FiniteMemoryLLM(
        EchoBackend(), policy="sliding", max_tokens=100_000, max_new_tokens=16, segment_tokens=8
    )
    roles = ["user", "assistant"]
    llm.extend([Message(roles[i % 2], t) for i, t in enumerate(history)])
    prompt = llm.context(new)
    assert [m.content for m in prompt[:-1]] == history
    assert [m.role for m in prompt[:-1]] == [roles[i % 2] for i in range(len(history))]
    assert prompt[-1].content == new


def test_recall_block_has_a_plain_lead_in_and_the_new_message_last() -> None:
    seg = Segment(3, 3, "user", "I adopted a beagle.", 6)
    new = "  What pet do I have?\n"
    text = ContextBuilder().user_text([seg], new)
    assert text.startswith("Earlier in this conversation:\nuser: I adopted a beagle.\n\n")
    assert text.endswith(new)  # the new message is the turn's last text, verbatim
    assert "[" not in text  # no bracketed marker for a small model to copy
