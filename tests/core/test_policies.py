"""Properties every memory policy must have, and query-aware recall of planted facts."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmai_core.policies import POLICY_NAMES, PolicyRequest, Selection, Signals, get_policy
from fmai_core.segments import Segment
from fmai_core.testing import tokenize

RECALLING = ("importance", "semantic", "rolling_summary", "hybrid")
WORDS = (
    "garden tomato rain forecast pasta garlic movie actor train museum laptop battery "
    "sister Ada 4821 Porto dentist Friday gate flight the a my is and of"
).split()


def count(text: str) -> int:
    return len(tokenize(text))


def segments(texts: Sequence[str]) -> tuple[Segment, ...]:
    return tuple(
        Segment(i, i, "user" if i % 2 == 0 else "assistant", t, count(t) + 3, turn=i // 2)
        for i, t in enumerate(texts)
    )


def fake_importance(texts: Sequence[str], query: str) -> list[float]:
    return [float(len(t) % 7) for t in texts]


def fake_embed(texts: Sequence[str]) -> list[list[float]]:
    return [[float(t.lower().count(c)) for c in "aeiourstln"] for t in texts]


def fake_summarize(text: str, max_tokens: int) -> str:
    return " ".join(text.split()[: max(1, max_tokens // 2)])


SIGNALS = {
    "none": Signals(),
    "model": Signals(importance=fake_importance, embed=fake_embed, summarize=fake_summarize),
}

texts_strategy = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join),
    min_size=0,
    max_size=25,
)


def check_budget(request: PolicyRequest, selection: Selection) -> None:
    by_id = {c.id: c for c in request.candidates}
    assert set(selection.keep) <= set(by_id), "kept ids must be candidate ids"
    assert len(set(selection.keep)) == len(selection.keep), "no id kept twice"
    used = sum(by_id[i].tokens for i in selection.keep)
    if selection.summary is not None:
        assert request.mode == "evict"
        used += request.count_text(selection.summary)
    assert used <= request.budget


@pytest.mark.parametrize("name", POLICY_NAMES)
@pytest.mark.parametrize("signals", list(SIGNALS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=texts_strategy,
    budget=st.integers(min_value=0, max_value=150),
    mode=st.sampled_from(["evict", "recall"]),
    query=st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join),
    previous=st.one_of(st.none(), st.sampled_from(["user: My sister Ada lives in Porto."])),
)
def test_budget_ids_and_determinism(
    name: str,
    signals: str,
    texts: list[str],
    budget: int,
    mode: str,
    query: str,
    previous: str | None,
) -> None:
    summary = Segment(-1, -1, "system", previous, count(previous), "summary") if previous else None
    request = PolicyRequest(
        mode,  # type: ignore[arg-type]
        segments(texts),
        budget,
        query=query,
        signals=SIGNALS[signals],
        summary=summary if mode == "evict" else None,
        count_text=count,
    )
    first = get_policy(name).select(request)
    check_budget(request, first)
    again = get_policy(name).select(request)
    assert again == first, "same request, same selection"
    assert "signal" in first.stats


def filler(rng: random.Random, n: int) -> list[str]:
    topics = [
        "the garden needs compost and the tomatoes need water",
        "the forecast says rain and a storm on the weekend",
        "I tried a pasta recipe with garlic and basil",
        "the new movie had a great soundtrack and a weak plot",
        "my laptop battery dies fast after the update",
        "the train to the museum was late again",
        "the gym was crowded so I did yoga at home",
        "our team lost the match because the coach rested the striker",
    ]
    return [f"{rng.choice(topics).capitalize()}, {rng.choice(topics)}." for _ in range(n)]


@pytest.fixture
def long_conversation() -> tuple[tuple[Segment, ...], int]:
    """600 segments of filler with a fact planted about 300 messages before the end."""
    rng = random.Random(7)
    texts = filler(rng, 600)
    texts[290] = "My sister is called Ada."
    return segments(texts), 290


@pytest.mark.parametrize("name", RECALLING)
def test_recall_finds_a_fact_from_300_messages_ago(
    name: str, long_conversation: tuple[tuple[Segment, ...], int]
) -> None:
    candidates, fact = long_conversation
    request = PolicyRequest(
        "recall", candidates, 60, query="What is my sister's name?", count_text=count
    )
    selection = get_policy(name).select(request)
    assert candidates[fact].id in selection.keep
    assert selection.stats["signal"] == "proxy"


@pytest.mark.parametrize("name", RECALLING)
def test_recall_brings_back_nothing_for_an_unrelated_query(
    name: str, long_conversation: tuple[tuple[Segment, ...], int]
) -> None:
    candidates, _ = long_conversation
    request = PolicyRequest("recall", candidates, 60, query="hello, how are you?")
    assert get_policy(name).select(request).keep == ()


@pytest.mark.parametrize("name", ["importance", "semantic", "hybrid"])
def test_evict_keeps_what_the_incoming_message_asks_about(
    name: str, long_conversation: tuple[tuple[Segment, ...], int]
) -> None:
    candidates, fact = long_conversation
    budget = sum(c.tokens for c in candidates) // 10
    request = PolicyRequest(
        "evict", candidates, budget, query="What is my sister's name?", count_text=count
    )
    selection = get_policy(name).select(request)
    assert candidates[fact].id in selection.keep
    assert candidates[-1].id in selection.keep, "the newest segment keeps the thread"


def test_sliding_keeps_only_the_newest(long_conversation: tuple[tuple[Segment, ...], int]) -> None:
    candidates, fact = long_conversation
    selection = get_policy("sliding").select(PolicyRequest("evict", candidates, 100))
    assert candidates[fact].id not in selection.keep
    assert set(selection.keep) == {c.id for c in candidates[-len(selection.keep) :]}


@pytest.mark.parametrize("name", ["importance", "hybrid"])
def test_model_importance_is_used_and_reported(name: str) -> None:
    texts = ["alpha beta gamma.", "delta epsilon zeta.", "eta theta iota.", "kappa lambda mu."]
    candidates = segments(texts)
    favourite = candidates[0]

    def scorer(items: Sequence[str], query: str) -> list[float]:
        return [10.0 if t == favourite.text else 0.1 for t in items]

    policy = type(get_policy(name))(keep_recent=1)  # type: ignore[call-arg]
    budget = favourite.tokens + candidates[-1].tokens
    request = PolicyRequest("evict", candidates, budget, signals=Signals(importance=scorer))
    selection = policy.select(request)
    assert selection.stats["signal"] == "model"
    assert favourite.id in selection.keep
    proxy = policy.select(PolicyRequest("evict", candidates, budget))
    assert proxy.stats["signal"] == "proxy"


def test_importance_proxy_prefers_facts_over_chit_chat() -> None:
    texts = ["ok, thanks!", "Nice, sounds good.", "I live in Tartu with my cat Mira.", "Cool."]
    candidates = segments(texts)
    policy = get_policy("importance")
    budget = candidates[2].tokens + candidates[3].tokens
    selection = policy.select(PolicyRequest("evict", candidates, budget, query="so"))
    assert candidates[2].id in selection.keep


@pytest.mark.parametrize("name", RECALLING)
def test_recall_skips_what_is_in_the_prompt_and_repeats(name: str) -> None:
    texts = [
        "My coworker is allergic to cats.",
        "I'm allergic to sesame, so keep that in mind.",
        "My coworker is allergic to cats.",
        "Nice weather today.",
    ]
    candidates = segments(texts)
    in_prompt = (Segment(99, 99, "user", "I'm allergic to  SESAME, so keep that in mind.", 12),)
    request = PolicyRequest(
        "recall", candidates, 100, query="What am I allergic to?", context=in_prompt
    )
    selection = get_policy(name).select(request)
    assert selection.keep == (candidates[2].id,), "only the newest copy of what is not there"
