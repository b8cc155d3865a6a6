"""recall_layout="stable": recalled blocks stay with the message they were shown with."""

from __future__ import annotations

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.errors import ConfigurationError
from fmai_core.testing import EchoBackend

FACTS = [
    "My sister is called Eve and she loves old temples.",
    "I grew up in Porto, near the river.",
    "The code for my bike lock is 4821.",
    "My favourite dessert is baklava with pistachio.",
]
FILLER = [
    "The weather was grey again today, with rain in the afternoon.",
    "I watched a film about sailors last night, it was long.",
    "Work was busy, three meetings and a report to finish.",
    "We cooked pasta with garlic and basil for dinner.",
    "The train was late, so I read a novel on the platform.",
    "My laptop needs an update, the battery drains fast.",
]
QUESTIONS = [
    "What is my sister called and what does she love?",
    "Where did I grow up?",
    "What was the code for my bike lock?",
    "What is my favourite dessert?",
]


def _llm(layout: str, **kw: object) -> FiniteMemoryLLM:
    settings: dict[str, object] = {
        "policy": "semantic",
        "max_tokens": 600,
        "max_new_tokens": 16,
        "system_prompt": "Be brief.",
        "max_policy_ms": None,
        "recall_layout": layout,
        **kw,
    }
    llm = FiniteMemoryLLM(EchoBackend(), **settings)  # type: ignore[arg-type]
    for i, fact in enumerate(FACTS):
        llm.extend([Message("user", fact), Message("assistant", "Noted.")])
        for text in FILLER[i % 3 : i % 3 + 3]:
            llm.extend([Message("user", text), Message("assistant", "I see.")])
    return llm


def _turns() -> list[str]:
    return [q for pair in zip(QUESTIONS, FILLER) for q in pair] + QUESTIONS


def test_stable_prompts_are_append_only_between_evictions() -> None:
    # A fixed recall share, so that what is checked does not hang on the adaptive split
    # (at MAX_RECALL_SHARE 0.9, since reverted, this short conversation evicted on every
    # turn from its 8th and no block could stay to be checked).
    llm = _llm("stable", recall_fraction=0.4)
    previous: list[Message] = []
    kept = recalled_turns = 0
    for text in _turns():
        prompt = llm.context(text)
        r = llm.chat(text)
        assert r.stats.prompt_tokens + 16 <= 600  # the budget invariant
        assert prompt[-1].content.endswith(text)  # the new message is the last text
        recalled_turns += r.stats.recalled_tokens > 0
        if previous and not r.stats.evicted and "recall_shown_dropped" not in r.stats.policy_stats:
            assert prompt[: len(previous)] == previous  # the last prompt, unchanged
            assert prompt[len(previous)] == Message("assistant", llm.messages()[-3].content)
            kept += previous[-1].content.startswith("Earlier in this conversation:")
        # No recalled segment is shown twice: a turn recalls only what is not shown yet.
        shown = [i for _, ids in llm.state.shown for i in ids]
        assert len(shown) == len(set(shown))
        previous = prompt
    assert recalled_turns >= 2
    assert kept >= 1  # a recalled block stayed in the next prompt


def test_fresh_is_the_default_and_shows_recall_in_the_last_message_only() -> None:
    llm = _llm("fresh")
    assert FiniteMemoryLLM(EchoBackend()).config.recall_layout == "fresh"
    for text in _turns():
        prompt = llm.context(text)
        llm.chat(text)
        earlier = [m for m in prompt[:-1] if m.role == "user"]
        assert all(not m.content.startswith("Earlier in this conversation:") for m in earlier)
    assert llm.state.shown == ()


def test_checkpoint_keeps_the_shown_blocks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    llm = _llm("stable")
    for text in _turns():
        llm.chat(text)
    assert llm.state.shown  # something is shown with an earlier message
    llm.save(tmp_path / "chat.json")
    again = FiniteMemoryLLM.load(tmp_path / "chat.json", EchoBackend())
    assert again.config.recall_layout == "stable"
    assert again.state.shown == llm.state.shown
    assert again.context("Where did I grow up?") == llm.context("Where did I grow up?")


def test_bad_layout_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="recall_layout must be one of fresh, stable"):
        FiniteMemoryLLM(EchoBackend(), recall_layout="sticky")


def test_a_shown_block_the_recall_picks_stays_and_is_not_recalled_again() -> None:
    """Sticky recall: the shown blocks are asked with the rest of the archive; what the
    recall picks from them takes its share of the reserve but stays where it is."""
    llm = _llm("stable")
    for text in _turns():
        llm.chat(text)
    shown = llm.state.shown
    assert shown
    text = "What was the code for my bike lock, again?"
    previous = llm.context(text)
    assert sum(m.content.count(FACTS[2]) for m in previous) == 1  # shown with an old question
    r = llm.chat(text)
    stats = r.stats.policy_stats
    assert not r.stats.evicted
    assert stats["recall_kept_shown"] >= 1  # the recall picked the shown block
    assert stats["recall_kept_tokens"] > r.stats.recalled_tokens == 0  # and recalled nothing new
    assert llm.state.shown == shown
    after = llm.context("Where did I grow up?")
    assert after[: len(previous) - 1] == previous[:-1]  # append-only
    assert sum(m.content.count(FACTS[2]) for m in after) == 1  # still shown once
