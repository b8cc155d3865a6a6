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
