"""Recall's cost follows what changed, not the archive: incremental views stay exact."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from fmai_core import FiniteMemoryLLM
from fmai_core.policies import PolicyRequest, Selection
from fmai_core.policies.base import enforce_budget
from fmai_core.segments import Segment
from fmai_core.testing import EchoBackend

recall_module = importlib.import_module("fmai_core.retrieval.recall")

WORDS = "garden violin Porto Ada kayak Lviv Bruno chess museum Kyoto pottery jazz".split()


def _text(i: int) -> str:
    a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
    if i % 9 == 0:
        return "Same words again."  # repeated texts: the newest copy is the one recalled
    return f"On day {i} I did the {a} thing with {b} and spent {i * 13 % 97} euros."


@pytest.mark.parametrize("archive_limit", [None, 40])
def test_the_incremental_archive_view_equals_a_fresh_build(
    archive_limit: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = recall_module._archive
    deltas: list[int] = []

    def spy(candidates: Any, previous: Any = None, delta: Any = None) -> Any:
        if delta is not None:
            deltas.append(len(delta[0]) + len(delta[1]))
        return build(candidates, previous, delta)

    monkeypatch.setattr(recall_module, "_archive", spy)
    llm = FiniteMemoryLLM(
        EchoBackend(), policy="hybrid", max_tokens=300, max_new_tokens=24, max_policy_ms=None,
        archive_limit=archive_limit,
    )  # fmt: skip
    index = llm._planner.index
    for i in range(160):
        llm.chat(_text(i))
        archive = llm.state.archive
        if not archive:
            continue
        kept = index.view(archive, spy)  # as recall reads it
        fresh = build(archive)
        assert kept.units == fresh.units and kept.order == fresh.order
        assert kept.newest == fresh.newest and kept.ids == fresh.ids
    assert llm.state.archive_dropped > 0 or archive_limit is None
    assert len(deltas) > 20  # built from the planner's change, not by scanning the archive


def test_enforce_budget_finds_kept_segments_by_bisection_or_by_scan() -> None:
    ordered = tuple(Segment(i, i, "user", f"s{i}", 5) for i in range(0, 40, 2))
    selection = Selection(keep=(38, 4, 99, 10))  # 99 is not a candidate
    out = enforce_budget(PolicyRequest("recall", ordered, 10), selection)
    assert out.keep == (38, 4) and out.stats["trimmed"] == 1  # the worst ranked went
    shuffled = ordered[::-1]  # not in conversation order (a policy called by hand)
    again = enforce_budget(PolicyRequest("recall", shuffled, 10), selection)
    assert again.keep == (38, 4)


def test_a_full_archive_scores_what_changed_not_the_whole_archive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An evicting turn with a full archive scored every archived segment again to find the
    # lowest-value ones (heapq.nsmallest over the archive): ~190 ms a turn at the default
    # archive_limit=10_000. The order is carried from one plan to the next instead.
    from fmai_core import Message

    planner_module = importlib.import_module("fmai_core.planner")
    llm = FiniteMemoryLLM(
        EchoBackend(),
        "sliding",
        max_tokens=400,
        max_new_tokens=40,
        archive_limit=600,
        max_policy_ms=None,
    )
    llm.extend([Message("user" if i % 2 == 0 else "assistant", _text(i)) for i in range(700)])
    llm.chat("and now?")  # the archive fills: its order is computed once
    assert len(llm.state.archive) == 600
    scored: list[int] = []
    value = planner_module.archive_value

    def counting(segment: Segment) -> float:
        scored.append(segment.id)
        return value(segment)

    monkeypatch.setattr(planner_module, "archive_value", counting)
    evicted = 0
    for i in range(30):
        scored.clear()
        r = llm.chat(_text(i))
        evicted += len(r.trace.evicted) if r.trace else 0
        assert len(scored) <= 20, len(scored)  # the segments added, not the 600 archived
    assert evicted and llm.state.archive_dropped > 100


@pytest.mark.parametrize("policy", ["sliding", "hybrid"])
def test_the_carried_drop_order_equals_a_fresh_one(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    planner_module = importlib.import_module("fmai_core.planner")

    def run() -> list[Any]:
        llm = FiniteMemoryLLM(
            EchoBackend(),
            policy,
            max_tokens=300,
            max_new_tokens=40,
            archive_limit=30,
            max_policy_ms=None,
        )
        states = []
        for i in range(60):
            llm.chat(_text(i) + " " + _text(i + 1) * (i % 3))
            states.append(llm.state.to_dict())
        return states

    carried = run()
    monkeypatch.setattr(planner_module.Planner, "_remember_ranks", lambda *a: None)
    assert run() == carried  # every plan computed its order afresh: the same archives
