"""Per-candidate-set memos (index, information, topics) never change what a policy selects."""

from __future__ import annotations

import random

import pytest

from fmai_core.policies import PolicyRequest, get_policy
from fmai_core.relevance import clear_caches, corpus_index, corpus_information
from fmai_core.segments import Segment

WORDS = (
    "pasta garlic oven rocket orbit planet seeds soil compost python bug compiler "
    "sister Ada Lisbon flight gate B12 allergic peanuts violin Tuesday"
).split()


def candidates(seed: int, n: int = 120) -> tuple[Segment, ...]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.sample(WORDS, 5)).capitalize() + "."
        out.append(Segment(i, i, "user" if i % 2 == 0 else "assistant", text, 8, turn=i // 2))
    return tuple(out)


def test_corpus_memos_are_shared_and_cleared() -> None:
    texts = tuple(s.text for s in candidates(1))
    clear_caches()
    index = corpus_index(texts)
    assert corpus_index(tuple(texts)) is index, "the same texts reuse one index"
    assert corpus_information(texts) is corpus_information(texts)
    clear_caches()
    assert corpus_index(texts) is not index


@pytest.mark.parametrize("name", ["importance", "semantic", "rolling_summary", "hybrid"])
@pytest.mark.parametrize("mode", ["evict", "recall"])
def test_a_warm_memo_selects_what_a_cold_one_does(name: str, mode: str) -> None:
    policy = get_policy(name)
    segments = candidates(2)
    budget = 200 if mode == "evict" else 40
    request = PolicyRequest(mode, segments, budget, query="Which gate is my flight to Lisbon?")
    other = PolicyRequest(mode, segments, budget, query="Who plays the violin on Tuesday?")
    clear_caches()
    cold = policy.select(request)
    clear_caches()
    policy.select(other)  # fills the memos for these candidates with another query
    warm = policy.select(request)
    assert warm.keep == cold.keep
    assert warm.stats == cold.stats
    assert cold.keep, "the request selects something, so the comparison means something"
