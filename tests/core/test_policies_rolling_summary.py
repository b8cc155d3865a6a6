"""`rolling_summary`: the fidelity gate, the extractive fallback, and what is kept."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fmai_core.fidelity import check_fidelity, claims
from fmai_core.policies import PolicyRequest, Signals
from fmai_core.policies.rolling_summary import RollingSummaryPolicy, extractive_summary
from fmai_core.segments import Segment
from fmai_core.testing import tokenize

OLD = [
    "Hi! How is your day going?",
    "Pretty good, thanks for asking.",
    "My sister is called Ada and she lives in Porto.",
    "Nice, Porto is lovely.",
    "The code for my bike lock is 4821.",
    "Good to know.",
    'She always says "never give up" before a race.',
    "That is a great motto.",
]
RECENT = ["What should I cook tonight?", "How about pasta with garlic and basil?"]
POLICY = RollingSummaryPolicy(summary_fraction=0.5)


def count(text: str) -> int:
    return len(tokenize(text))


def segments(texts: Sequence[str]) -> tuple[Segment, ...]:
    return tuple(
        Segment(i, i, "user" if i % 2 == 0 else "assistant", t, count(t) + 3)
        for i, t in enumerate(texts)
    )


def request(summarize: Signals | None = None, previous: str | None = None) -> PolicyRequest:
    candidates = segments(OLD + RECENT)
    summary = Segment(-1, -1, "system", previous, count(previous), "summary") if previous else None
    return PolicyRequest(
        "evict",
        candidates,
        budget=80,  # with POLICY: 40 tokens for the summary, 40 for recent history
        query="What should I cook?",
        signals=summarize or Signals(),
        summary=summary,
        count_text=count,
    )


def source_text() -> str:
    return " ".join(OLD)


def test_without_a_summarizer_the_summary_is_extractive_and_informative() -> None:
    req = request()
    selection = POLICY.select(req)
    assert selection.summary is not None
    assert selection.stats["summary"] == "extractive"
    assert selection.stats["signal"] == "proxy"
    assert count(selection.summary) <= int(req.budget * 0.5)
    # Verbatim sentences, and the most informative ones, not simply the first.
    assert "Hi! How is your day going?" not in selection.summary
    assert "My sister is called Ada and she lives in Porto." in selection.summary
    assert check_fidelity(selection.summary, source_text()).passed
    # The newest history that fits what the summary leaves is kept, and nothing older.
    room = req.budget - int(req.budget * 0.5)
    kept = [c for c in req.candidates if c.id in selection.keep]
    assert kept == list(req.candidates[-len(kept) :])
    assert sum(c.tokens for c in kept) <= room
    assert sum(c.tokens for c in req.candidates[-len(kept) - 1 :]) > room


def test_a_faithful_model_summary_is_kept() -> None:
    def summarize(text: str, max_tokens: int) -> str:
        assert "My sister is called Ada" in text
        return "The user's sister Ada lives in Porto; the bike lock code is 4821."

    selection = POLICY.select(request(Signals(summarize=summarize)))
    assert selection.summary == "The user's sister Ada lives in Porto; the bike lock code is 4821."
    assert selection.stats["summary"] == "model"
    assert selection.stats["gate"] == "passed"
    assert selection.stats["signal"] == "model"


@pytest.mark.parametrize(
    ("draft", "bad"),
    [
        ("The user's sister Ada lives in Porto; the bike lock code is 4812.", "4812"),
        ("The user's sister Eva lives in Porto; the bike lock code is 4821.", "Eva"),
        ('The user says "never surrender" and lives near Porto.', '"never surrender"'),
    ],
)
def test_the_gate_rejects_a_hallucinated_number_name_or_quote(draft: str, bad: str) -> None:
    selection = POLICY.select(request(Signals(summarize=lambda t, n: draft)))
    assert selection.stats["gate"] == "failed"
    assert bad in selection.stats["unsupported"]
    assert selection.stats["summary"] == "extractive"
    assert selection.summary is not None
    assert bad.strip('"') not in selection.summary
    assert check_fidelity(selection.summary, source_text()).passed


def test_an_over_long_model_summary_falls_back() -> None:
    long = " ".join(OLD * 3)
    selection = POLICY.select(request(Signals(summarize=lambda t, n: long)))
    assert selection.stats["gate"] == "over_budget"
    assert selection.stats["summary"] == "extractive"


def test_the_previous_summary_is_folded_in() -> None:
    previous = "user: I grew up in Tartu and my dog is named Kiri."
    selection = POLICY.select(request(previous=previous))
    assert selection.summary is not None
    assert "I grew up in Tartu and my dog is named Kiri." in selection.summary


def test_nothing_to_fold_keeps_everything_and_the_summary() -> None:
    candidates = segments(RECENT)
    req = PolicyRequest("evict", candidates, 1000, count_text=count)
    selection = RollingSummaryPolicy().select(req)
    assert selection.summary is None
    assert set(selection.keep) == {c.id for c in candidates}


def test_recall_mode_is_lexical() -> None:
    candidates = segments(OLD)
    req = PolicyRequest("recall", candidates, 40, query="what was my bike lock code?")
    selection = RollingSummaryPolicy().select(req)
    assert selection.keep == (candidates[4].id,)
    assert selection.stats["recall"] == "lexical"


def test_extractive_summary_fits_and_keeps_order() -> None:
    lines = [f"user: {t}" for t in OLD]
    text = extractive_summary(lines, 25, count)
    assert count(text) <= 25
    chosen = text.splitlines()
    assert chosen == sorted(chosen, key=lines.index)
    assert extractive_summary(lines, 0, count) == ""


def test_claims_heuristics() -> None:
    found = claims('Yesterday Ada met Bruno in Porto at 7:30 and said "hi there". I agreed.')
    assert found.numbers == ("730",)
    assert found.names == ("Ada", "Bruno", "Porto")  # "Yesterday" and "I" are not names
    assert found.quotes == ("hi there",)
    assert check_fidelity("Ada lives in Porto.", "ada LIVES in porto").passed
    assert check_fidelity("The code is 4,821.", "the code is 4821").passed
    assert check_fidelity("nothing checkable here", "something else").passed
    assert not check_fidelity("Meet Ada at noon. Ada will wait.", "meet at noon").passed


def _summarized(**kw: object) -> object:
    from fmai_core import FiniteMemoryLLM
    from fmai_core.testing import EchoBackend

    llm = FiniteMemoryLLM(
        EchoBackend(), "rolling_summary", max_tokens=300, max_new_tokens=40, system_prompt="sys",
        max_policy_ms=None, recall_fraction=0.0, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    for i in range(30):
        llm.chat(f"On day {i} I met Person{i} in City{i} and paid {i * 7} euros for item{i}.")
    assert llm.state.summary is not None and llm.state.summary.tokens > 20
    return llm


def test_a_message_that_fits_without_the_summary_is_sent_without_it() -> None:
    # The summary was counted as fixed, like the system prompt: a message that fits under
    # max_tokens (with all history evicted) was refused ("needs N tokens but at most M fit
    # ... shorten the message") because of a summary of what is in the archive anyway.
    from fmai_core import FiniteMemoryLLM, Message

    llm = _summarized()
    assert isinstance(llm, FiniteMemoryLLM)
    be = llm.backend
    record = llm.messages()

    def alone(n: int) -> int:
        words = " ".join(f"w{i}" for i in range(n))
        return be.count_tokens([Message("system", "sys"), Message("user", words)])

    n = max(n for n in range(1, 300) if alone(n) + 40 <= 300)  # the longest that fits
    msg = " ".join(f"w{i}" for i in range(n))
    r = llm.chat(msg)
    sent = be.calls[-1]  # type: ignore[attr-defined]
    assert be.count_tokens(sent) + 40 <= 300
    assert sent[-1].content == msg
    assert r.stats.policy_stats.get("summary_dropped") is True
    assert llm.messages()[: len(record)] == record  # what it summarised is all still there
    assert llm.chat("and a short one").response


def test_a_checkpoint_whose_summary_leaves_no_room_loads_and_continues(tmp_path: object) -> None:
    # Its summary counted as fixed, a smaller max_tokens on load was refused (BudgetError).
    from pathlib import Path

    from fmai_core import FiniteMemoryLLM
    from fmai_core.testing import EchoBackend

    llm = _summarized()
    assert isinstance(llm, FiniteMemoryLLM)
    path = Path(str(tmp_path)) / "chat.json"
    llm.save(path)
    summary = llm.state.summary
    assert summary is not None
    room = summary.tokens + 12  # the system prompt and the summary leave no room
    smaller = FiniteMemoryLLM.load(path, EchoBackend(), max_tokens=room + 40)
    assert smaller.chat("hello again").response
    sent = smaller.backend.calls[-1]  # type: ignore[attr-defined]
    assert smaller.backend.count_tokens(sent) + 40 <= room + 40
