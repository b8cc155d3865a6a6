"""Planner unit tests: the budget, eviction in blocks, recall's share, the exact fit."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import pytest

from fmai_core import Message
from fmai_core.config import MemoryConfig
from fmai_core.context import ContextBuilder
from fmai_core.errors import MessageTooLongError
from fmai_core.memory import MemoryState, segment_message
from fmai_core.planner import MAX_RECALL_SHARE, Planner
from fmai_core.policies import Policy, PolicyRequest, Selection, Signals, get_policy
from fmai_core.segments import Segment
from fmai_core.testing import EchoBackend
from fmai_core.text import split_sentences
from fmai_core.tokens import TokenCounter


class Overcounting(EchoBackend):
    """Counts each message a few tokens more than its segments say (a template's extra)."""

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return super().count_tokens(messages) + 3 * len(messages)


def _planner(
    backend: EchoBackend, policy: str | Policy = "sliding", max_tokens: int = 400, **config: Any
) -> Planner:
    config.setdefault("max_policy_ms", None)
    return Planner(
        policy=get_policy(policy),
        counter=TokenCounter(backend),
        builder=ContextBuilder(),
        config=MemoryConfig(max_tokens=max_tokens, max_new_tokens=32, **config),
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


@dataclass(frozen=True)
class Greedy(Policy):
    """Keeps every candidate and recalls every archived one: over any budget."""

    name: ClassVar[str] = "greedy"

    def select(self, request: PolicyRequest) -> Selection:
        return Selection(keep=tuple(s.id for s in reversed(request.candidates)))


@dataclass(frozen=True)
class Broken(Policy):
    name: ClassVar[str] = "broken"

    def select(self, request: PolicyRequest) -> Selection:
        raise RuntimeError("a policy bug")


def test_the_planner_holds_every_policy_to_its_budget() -> None:
    planner = _planner(EchoBackend(), Greedy())
    state = _state(planner, 80)
    new = _segments(planner, state, "user", "And now?")
    plan = planner.plan(state, new, "And now?")
    available = planner._budget(state, "And now?")
    kept = sum(s.tokens for s in plan.state.history)
    assert plan.evicted and kept <= 0.6 * available  # the evict request's low-water budget
    assert plan.policy_stats["trimmed"] > 0
    assert plan.policy_stats["recall_trimmed"] > 0  # recall: kept only what its share holds
    recalled = sum(s.tokens for s in plan.recalled)
    assert kept + recalled <= available and plan.prompt_tokens + 32 <= 400
    # recall trims the worst ranked first: Greedy ranks the newest first, so those stay
    assert max(s.id for s in plan.recalled) == max(s.id for s in plan.state.archive)


def test_a_failing_policy_falls_back_to_sliding_and_recalls_nothing() -> None:
    planner = _planner(EchoBackend(), Broken())
    state = _state(planner, 80)
    new = _segments(planner, state, "user", "And now?")
    plan = planner.plan(state, new, "And now?")
    assert plan.fallback and plan.policy == "sliding"
    assert plan.policy_stats["fallback_reason"] == "RuntimeError"
    assert plan.policy_stats["recall_fallback_reason"] == "RuntimeError"
    kept = plan.state.history
    assert plan.evicted and kept == state.history[-len(kept) :]  # sliding: the newest
    assert plan.recalled == ()  # the fallback recalls nothing


def test_a_fixed_recall_share_and_none_for_sliding() -> None:
    state = _state(_planner(EchoBackend()), 80)
    fixed = _planner(EchoBackend(), "hybrid", recall_fraction=0.25)
    assert fixed.recall_share(state, "anything", 300) == 0.25
    assert _planner(EchoBackend(), recall_fraction=0.25).recall_share(state, "x", 300) == 0.0
    adaptive = _planner(EchoBackend(), "hybrid")
    assert 0.1 <= adaptive.recall_share(state, "What about item 3?", 300) <= MAX_RECALL_SHARE


def test_a_full_archive_drops_its_lowest_value_segments() -> None:
    planner = _planner(EchoBackend(), archive_limit=10)
    state = _state(planner, 80)
    low = state.history[5]
    state = replace(state, history=tuple(
        replace(s, text="ok") if s.id == low.id else s for s in state.history
    ))  # fmt: skip
    new = _segments(planner, state, "user", "And now?")
    plan = planner.plan(state, new, "And now?")
    assert len(plan.state.archive) == 10
    assert plan.state.archive_dropped == len(state.history) - len(plan.state.history) - 10
    assert low.id not in {s.id for s in plan.state.archive}  # the least informative went first
    ids = [s.id for s in plan.state.archive]
    assert ids == sorted(ids)


def test_planning_changes_nothing_outside_the_plan() -> None:
    planner = _planner(EchoBackend(), "hybrid")
    state = _state(planner, 80)
    planner.index.add(state.history)
    before = (state, planner.signals, planner.index.size, planner.config)
    new = _segments(planner, state, "user", "What about item 7?")
    first = planner.plan(state, new, "What about item 7?")
    again = planner.plan(state, new, "What about item 7?")
    assert (state, planner.signals, planner.index.size, planner.config) == before
    assert first.messages == again.messages and first.state == again.state


def test_a_slow_model_signal_is_switched_off_in_the_plan_only() -> None:
    gate = threading.Event()

    def slow(texts: Sequence[str], query: str) -> list[float]:
        gate.wait()  # a forward pass that ends only after the deadline
        return [1.0] * len(texts)

    planner = _planner(EchoBackend(), "hybrid", max_policy_ms=20.0)
    planner.signals = Signals(importance=slow)
    state = _state(planner, 80)
    new = _segments(planner, state, "user", "And now?")
    try:
        plan = planner.plan(state, new, "And now?")
    finally:
        gate.set()
    assert plan.fallback and plan.signals_off
    assert planner.signals.importance is slow  # the engine applies it on commit only
