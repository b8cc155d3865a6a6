"""`TurnTrace`: the prompt of each turn in its parts, what was evicted and recalled."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.testing import EchoBackend
from fmai_core.trace import PART_NAMES

FILLER = [
    "The garden needs compost and the tomatoes need water.",
    "The forecast says rain and a storm on the weekend.",
    "I tried a pasta recipe with garlic and basil.",
    "My laptop battery dies fast after the update.",
    "The train to the museum was late again.",
]


def test_trace_parts_add_up_to_the_prompt_and_match_it() -> None:
    llm = FiniteMemoryLLM(
        EchoBackend(), policy="sliding", max_tokens=160, max_new_tokens=16,
        system_prompt="Be brief.", max_policy_ms=None,
    )  # fmt: skip
    llm.pin("The user is called Bo.")
    evicted_seen = []
    for i in range(12):
        before = {s.id for s in llm.state.history}
        r = llm.chat(FILLER[i % len(FILLER)] + f" ({i})")
        t = r.trace
        assert t is not None and t.stats == r.stats and t.turn == r.stats.turn == i
        # the exact prompt, in its parts
        assert [m.content for m in t.messages][-1] == t.new_message
        assert t.prompt_tokens == r.stats.prompt_tokens
        assert set(t.part_tokens) == set(PART_NAMES)
        assert sum(t.part_tokens.values()) + t.overhead_tokens == t.prompt_tokens
        assert t.system_prompt == "Be brief." and t.system_prompt_tokens > 0
        assert [p.text for p in t.pinned] == ["The user is called Bo."]
        assert t.part_tokens["history"] == sum(s.tokens for s in t.history)
        assert t.part_tokens["history"] + t.part_tokens["new"] > 0
        # what was evicted this turn: the stats agree, and it is in the archive now
        assert sum(s.tokens for s in t.evicted) == r.stats.evicted_tokens
        assert bool(t.evicted) == r.stats.evicted
        archived = {s.id for s in llm.state.archive}
        assert {s.id for s in t.evicted} <= before & archived
        assert t.archive_segments == len(llm.state.archive)
        evicted_seen += t.evicted
        assert llm.last_trace is t
        json.dumps(t.to_dict())  # JSON-ready
    assert evicted_seen, "the budget forces evictions"


def test_trace_of_a_query_changes_nothing_and_shows_recall_with_scores() -> None:
    llm = FiniteMemoryLLM(EchoBackend(), policy="semantic", max_tokens=220, max_new_tokens=24,
                          max_policy_ms=None)  # fmt: skip
    llm.extend([Message("user", "My sister is called Ada."), Message("assistant", "Noted!")])
    for i in range(14):
        llm.chat(FILLER[i % len(FILLER)])
    assert any("Ada" in s.text for s in llm.state.archive)
    before = (llm.state, llm.stats)
    query = "What is my sister called?"
    t = llm.trace(query)
    assert (llm.state, llm.stats) == before  # no side effect
    assert t.stats is None
    assert list(t.messages) == llm.context(query)
    assert any("Ada" in s.text for s in t.recalled)
    assert set(t.recall_scores) == {s.id for s in t.recalled}
    assert all(v > 0 for v in t.recall_scores.values())
    assert t.part_tokens["recalled"] == sum(s.tokens for s in t.recalled) > 0
    recalled = t.to_dict()["recalled"]
    assert all(isinstance(r["score"], float) for r in recalled)


def test_stream_sets_last_trace() -> None:
    llm = FiniteMemoryLLM(EchoBackend(), policy="sliding", max_tokens=160, max_new_tokens=16)
    text = "".join(llm.stream("Hello there."))
    assert llm.last_trace is not None and llm.last_trace.stats == llm.last_stats
    assert text and llm.last_trace.new_message == "Hello there."


def test_the_telemetry_page_example_prints_what_it_says() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"
    section = page.read_text(encoding="utf-8").split("## Per-turn traces", 1)[1]
    code, expected = re.findall(r"```\w+\n(.*?)```", section, flags=re.DOTALL)[:2]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(code, str(page), "exec"), {})
    assert buffer.getvalue() == expected
