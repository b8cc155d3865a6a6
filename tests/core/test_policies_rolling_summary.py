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
