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


def test_a_memo_is_capped_by_the_bytes_its_entries_hold() -> None:
    from fmai_core.memo import ENTRY_BYTES, memo, sizeof

    @memo(64 * 1024)
    def shout(text: str) -> tuple[str, ...]:
        return tuple(text.upper().split())

    texts = [f"message {i} " + "word " * (i % 40) for i in range(2000)]
    for text in texts:
        shout(text)
    info = shout.cache_info()
    assert 0 < info.bytes <= info.max_bytes == 64 * 1024
    assert info.currsize < len(texts), "old entries were dropped"
    held = sum(sizeof((t, shout(t))) + ENTRY_BYTES for t in texts[-info.currsize :])
    assert shout.cache_info().currsize == info.currsize, "the newest entries are the ones held"
    assert abs(held - info.bytes) <= 0.05 * info.bytes, "the count is the entries' own sizes"
    shout.cache_clear()
    assert shout.cache_info().bytes == 0


def test_a_memo_keeps_what_is_used_and_refuses_entry_counts() -> None:
    from fmai_core.memo import memo

    calls: list[str] = []

    @memo(8 * 1024)
    def echo(text: str) -> str:
        calls.append(text)
        return text * 10

    echo("hot")
    for i in range(200):
        echo(f"cold {i}")
        echo("hot")  # used every time: least recently used never
    assert calls.count("hot") == 1
    with pytest.raises(ValueError, match="bytes"):
        memo(2048)


def test_sizeof_counts_what_an_object_references() -> None:
    import sys

    from fmai_core.memo import sizeof

    words = [f"word-{i}-" + "x" * (i % 50) for i in range(5000)]
    exact = sys.getsizeof(words) + sum(sys.getsizeof(w) for w in words)
    assert abs(sizeof(words) - exact) <= 0.1 * exact, "a sample stands for a long list"
    index = {w: (i, w.upper()) for i, w in enumerate(words[:20])}
    assert sizeof(index) > sum(sys.getsizeof(w) * 2 for w in words[:20])
    shared = "a long shared text " * 20
    assert sizeof((shared, shared)) < 2 * sys.getsizeof(shared), "an object counts once"


def test_the_embedding_cache_is_capped_by_bytes() -> None:
    from fmai_core.memo import EmbeddingCache

    cache = EmbeddingCache(lambda texts: [[1.0] * 384 for _ in texts], max_bytes=100_000)
    for i in range(500):
        cache([f"text {i}"])
    assert 0 < cache.bytes <= 100_000
    assert len(cache([f"text {i}" for i in range(3)])[0]) == 384


def test_sizeof_is_not_fooled_by_where_the_large_items_sit() -> None:
    # A hostile client controls its messages' lengths and so where the long ones sit in a
    # candidate set: a sample at fixed positions (every 4th item of 64) saw only the short
    # ones: 4 KB counted of 964 KB (245x under), bytes kept outside the cap.
    import sys

    from fmai_core.memo import sizeof

    texts = tuple(("x" * 20_000 if i % 4 else "hi") + str(i) for i in range(64))
    held = sys.getsizeof(texts) + sum(map(sys.getsizeof, texts))
    assert sizeof(texts) >= held, "strings in a container are counted, not sampled"
    segments = tuple(Segment(i, i, "user", text, 8) for i, text in enumerate(texts))
    estimates = [sizeof(segments) for _ in range(200)]
    # the texts alone; the sample is random, so the estimate is right on average
    assert sum(estimates) / len(estimates) >= 0.5 * held
