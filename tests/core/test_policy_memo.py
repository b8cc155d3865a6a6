"""Memos never change what a policy selects; the engine prepares what enters memory."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.policies import PolicyRequest, get_policy
from fmai_core.policies.sliding import SlidingWindowPolicy
from fmai_core.relevance import clear_caches, corpus_index, corpus_information, hashed_embedding
from fmai_core.segments import Segment
from fmai_core.testing import EchoBackend

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


@dataclass(frozen=True)
class Recording(SlidingWindowPolicy):
    """`sliding`, recording what the engine asks it to prepare."""

    seen: list[str] = field(default_factory=list)

    def prepare(self, segments: Sequence[Segment]) -> None:
        self.seen.extend(s.text for s in segments)


@dataclass(frozen=True)
class Failing(SlidingWindowPolicy):
    def prepare(self, segments: Sequence[Segment]) -> None:
        raise RuntimeError("boom")


def test_engine_prepares_what_enters_memory(tmp_path: Path) -> None:
    policy = Recording()
    llm = FiniteMemoryLLM(EchoBackend(), policy=policy, max_tokens=400, max_new_tokens=16)
    llm.extend([Message("user", "My sister is Ada."), Message("assistant", "Noted.")])
    assert policy.seen == ["My sister is Ada.", "Noted."]
    reply = llm.chat("Where does Ada live?")
    assert policy.seen[2:] == ["Where does Ada live?", reply.response]
    assert reply.stats.policy_ms > 0.0
    llm.context("Not stored.")
    assert len(policy.seen) == 4, "context() changes nothing, so prepares nothing"
    path = tmp_path / "c.json"
    llm.save(path)
    restored = Recording()
    FiniteMemoryLLM.load(path, EchoBackend(), policy=restored)
    assert restored.seen == policy.seen, "load prepares the whole restored record"


def test_a_failing_prepare_warns_and_the_turn_stands() -> None:
    llm = FiniteMemoryLLM(EchoBackend(), policy=Failing(), max_tokens=400, max_new_tokens=16)
    with pytest.warns(RuntimeWarning, match="prepare failed"):
        reply = llm.chat("Hello there.")
    assert [m.content for m in llm.messages()][-2:] == ["Hello there.", reply.response]


def test_default_prepare_fills_the_proxies_per_text_caches() -> None:
    clear_caches()
    texts = [s.text for s in candidates(3, 40)]
    get_policy("hybrid").prepare(candidates(3, 40))
    assert hashed_embedding.cache_info().currsize >= len(set(texts))
    before = hashed_embedding.cache_info().misses
    request = PolicyRequest("evict", candidates(3, 40), 100, query="Where is gate B12?")
    get_policy("hybrid").select(request)
    assert hashed_embedding.cache_info().misses - before <= 1, "only the query is new"
