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
