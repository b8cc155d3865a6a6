"""Planner unit tests: the budget, eviction in blocks, recall's share, the exact fit."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fmai_core import Message
from fmai_core.config import MemoryConfig
from fmai_core.context import ContextBuilder
from fmai_core.errors import MessageTooLongError
from fmai_core.memory import MemoryState, segment_message
from fmai_core.planner import Planner
from fmai_core.policies import get_policy
from fmai_core.segments import Segment
from fmai_core.testing import EchoBackend
from fmai_core.text import split_sentences
from fmai_core.tokens import TokenCounter


class Overcounting(EchoBackend):
    """Counts each message a few tokens more than its segments say (a template's extra)."""

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return super().count_tokens(messages) + 3 * len(messages)


def _planner(backend: EchoBackend, policy: str = "sliding", max_tokens: int = 400) -> Planner:
    return Planner(
        policy=get_policy(policy),
        counter=TokenCounter(backend),
        builder=ContextBuilder(),
        config=MemoryConfig(max_tokens=max_tokens, max_new_tokens=32, max_policy_ms=None),
    )


def _state(planner: Planner, n: int) -> MemoryState:
    state = MemoryState()
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        state = state.append(_segments(planner, state, role, f"Message {i} about item {i}."))
    return state


def _segments(planner: Planner, state: MemoryState, role: str, text: str) -> list[Segment]:
    return segment_message(
        role, text, counter=planner.counter, splitter=split_sentences, max_tokens=64,
        first_id=state.next_segment_id, message_id=state.next_message_id, turn=state.turn,
    )  # fmt: skip


def test_eviction_goes_down_to_the_low_water_mark_in_one_block() -> None:
    planner = _planner(EchoBackend())
    state = _state(planner, 80)
    new = _segments(planner, state, "user", "And now?")
    plan = planner.plan(state, new, "And now?")
    assert plan.evicted
    kept = sum(s.tokens for s in plan.state.history)
    assert kept <= 0.6 * planner._budget(state, "And now?")  # sliding recalls nothing
    assert plan.prompt_tokens + 32 <= 400


def test_a_count_above_the_segments_sum_evicts_a_block_not_one_segment_a_turn() -> None:
    planner = _planner(Overcounting())
    state = _state(planner, 36)
    evictions = 0
    for turn in range(20):
        new = _segments(planner, state, "user", f"Turn {turn} question?")
        plan = planner.plan(state, new, f"Turn {turn} question?")
        assert plan.prompt_tokens + 32 <= 400
        evictions += plan.evicted
        state = plan.state.append(new)
        state = state.append(_segments(planner, state, "assistant", f"Answer {turn}."))
    assert evictions <= 6  # blocks, not one segment on every turn


def test_the_new_message_is_the_last_text_verbatim() -> None:
    planner = _planner(EchoBackend(), max_tokens=2000)
    text = "Line one of a long question.\n\n" + " ".join(f"Point {i} matters." for i in range(40))
    state = MemoryState()
    new = _segments(planner, state, "user", text)
    assert len(new) > 1
    plan = planner.plan(state, new, text)
    assert plan.messages[-1].content.endswith(text)


def test_a_message_that_cannot_fit_changes_nothing() -> None:
    planner = _planner(EchoBackend(), max_tokens=64)
    state = _state(planner, 4)
    new = _segments(planner, state, "user", "word " * 80)
    with pytest.raises(MessageTooLongError):
        planner.plan(state, new, "word")


def test_the_least_relevant_recalled_message_goes_first() -> None:
    planner = _planner(Overcounting(), policy="semantic", max_tokens=300)
    state = _state(planner, 60)
    state = MemoryState(archive=state.history[:50], history=state.history[50:],
                        next_segment_id=60, next_message_id=60)  # fmt: skip
    planner.index.add(state.archive + state.history)
    new = _segments(planner, state, "user", "What about item 7 and item 12?")
    plan = planner.plan(state, new, "What about item 7 and item 12?")
    assert plan.prompt_tokens + 32 <= 300
    texts = {s.text for s in plan.recalled}
    assert any("item 7." in t for t in texts) or any("item 12." in t for t in texts)
