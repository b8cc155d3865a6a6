"""Recall over the archive: fusion, the query-dependent budget split, whole messages."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.checkpoint import checksum
from fmai_core.errors import CheckpointError
from fmai_core.policies import PolicyRequest, Signals, get_policy
from fmai_core.retrieval import RecallIndex, recall, retrieve
from fmai_core.segments import Segment
from fmai_core.testing import EchoBackend

# A tiny concept embedder: each word maps to a concept axis, so paraphrases meet.
CONCEPTS = {
    "puppy": 0, "dog": 0, "beagle": 0, "pet": 0, "adopted": 1, "get": 1, "got": 1,
    "kind": 2, "gesture": 2, "day": 3, "weekend": 3, "sail": 4, "boat": 4,
}  # fmt: skip


def concept_embed(texts: Sequence[str]) -> list[list[float]]:
    out = []
    for text in texts:
        vec = [0.0] * 6
        for word in text.lower().replace("?", " ").replace(".", " ").split():
            vec[CONCEPTS.get(word, 5)] += 1.0 if word in CONCEPTS else 0.05
        out.append(vec)
    return out


def segs(texts: Sequence[str]) -> tuple[Segment, ...]:
    return tuple(
        Segment(i, i, "user" if i % 2 == 0 else "assistant", t, len(t.split()) + 3)
        for i, t in enumerate(texts)
    )


ARCHIVE = [
    "Caroline said the kind gesture made her day.",
    "I adopted a beagle last weekend.",
    "The weather was grey all week.",
    "Caroline thinks that kind of film is dull.",
]
QUERY = "What kind of pet did Caroline get?"


def test_fusion_ranks_a_paraphrased_questions_evidence_first() -> None:
    candidates = segs(ARCHIVE)
    budget = candidates[1].tokens  # room for exactly one message
    lexical = recall(PolicyRequest("recall", candidates, budget, query=QUERY))
    assert candidates[1].id not in lexical.keep  # BM25 alone: "kind" and "Caroline" win
    fused = recall(
        PolicyRequest(
            "recall", candidates, budget, query=QUERY, signals=Signals(embed=concept_embed)
        )
    )
    assert fused.keep == (candidates[1].id,)
    assert fused.stats["signal"] == "model"


def test_fusion_keeps_an_exact_lexical_match_the_embedding_ranks_second() -> None:
    # The embedder prefers the message full of dog words; BM25 has the only "beagle".
    index = RecallIndex()
    index.add(
        segs(
            [
                "The beagle we brought home from the shelter on the coast is called Biscuit.",
                "Puppy dog pet dog.",
                "The weather was grey all week.",
            ]
        ),
        embed=concept_embed,
    )
    query = "What is the beagle called?"
    lexical = retrieve(index, query, second_pass=False)
    dense = index.cosines(index.query_vector(query, concept_embed))
    fused = retrieve(index, query, embed=concept_embed, second_pass=False)
    assert lexical.best(0.15)[0] == 0
    assert max(dense, key=dense.__getitem__) == 1
    assert fused.best(0.15)[0] == 0  # fusion does not fall to the weaker signal


def test_second_pass_follows_a_bridge_entity() -> None:
    texts = [
        "I met Jess at my pottery class.",
        "Oh nice, what is she like?",
        "The traffic downtown was awful today.",
        "Jess just moved to Denver, sadly.",
        "Lunch was a sandwich.",
    ]
    candidates = segs(texts)
    picked = recall(PolicyRequest("recall", candidates, 40, query="Who did I meet at pottery?"))
    assert candidates[3].id in picked.keep  # reached through "Jess", not the question's words
    assert picked.stats["expanded"] > 0
    one_pass = recall(
        PolicyRequest("recall", candidates, 40, query="Who did I meet at pottery?"),
        second_pass=False,
    )
    assert candidates[3].id not in one_pass.keep


def test_a_split_message_comes_back_whole() -> None:
    llm = FiniteMemoryLLM(
        EchoBackend(), policy="semantic", max_tokens=400, max_new_tokens=16, segment_tokens=16
    )
    long = (
        "Here is the plan for the trip. We fly out on the ninth.\n"
        "The hotel is near the old harbour. My locker code at the marina is 5817. "
        "Dinner on the first night is at a fish place."
    )
    llm.extend([Message("user", long), Message("assistant", "Sounds great.")])
    for i in range(40):
        llm.extend(
            [Message("user", f"Filler chat number {i} about nothing."), Message("assistant", "ok")]
        )
    llm.chat("Anything else?")
    assert len({s.message_id for s in llm.state.archive}) > 10
    prompt = llm.context("What is the marina locker code?")[-1].content
    assert long in prompt  # every part, joined exactly as written


def _conversation() -> FiniteMemoryLLM:
    # `semantic` evicts by topic coverage; the fact is one line among many of its kind.
    llm = FiniteMemoryLLM(EchoBackend(), policy="semantic", max_tokens=600, max_new_tokens=16)
    llm.extend(
        [Message("user", "My bike lock code is 4821, remember it."), Message("assistant", "Noted.")]
    )
    for i in range(60):
        llm.extend(
            [
                Message("user", f"We talked about the garden, topic {i}."),
                Message("assistant", "Right."),
            ]
        )
    llm.extend(
        [Message("user", "I am baking sourdough bread tonight."), Message("assistant", "Yum.")]
    )
    llm.chat("Let us keep chatting.")
    assert any("4821" in s.text for s in llm.state.archive)  # the fact was evicted
    assert any("sourdough" in s.text for s in llm.state.history)
    return llm


def test_the_budget_split_moves_with_the_query() -> None:
    distant = _conversation().chat("What was my bike lock code?").stats.policy_stats
    follow_up = _conversation().chat("How long should the sourdough bread rest?").stats.policy_stats
    nothing = _conversation().chat("Okay!").stats.policy_stats
    assert distant["recall_share"] >= 0.8
    assert follow_up["recall_share"] <= 0.2
    assert nothing["recall_share"] <= 0.2


def test_a_fixed_recall_fraction_is_kept() -> None:
    llm = FiniteMemoryLLM(EchoBackend(), policy="hybrid", max_tokens=600, max_new_tokens=16,
                          recall_fraction=0.25)  # fmt: skip
    llm.extend([Message("user", f"Line {i} about the garden.") for i in range(80)])
    assert llm.chat("What was my bike lock code?").stats.policy_stats["recall_share"] == 0.25


def test_index_is_incremental_and_prunes() -> None:
    index = RecallIndex()
    index.add(segs(ARCHIVE[:2]))
    index.add(segs(ARCHIVE))  # already indexed messages are not added twice
    assert index.size == len(ARCHIVE)
    index.prune({0, 1})
    assert index.size == 2
    assert index.bm25({"weather": 1.0}, {0, 1, 2, 3}) == {}


def test_every_recalling_policy_uses_it() -> None:
    candidates = segs(ARCHIVE)
    for name in ("importance", "semantic", "hybrid", "rolling_summary"):
        picked = get_policy(name).select(
            PolicyRequest(
                "recall", candidates, 100, query=QUERY, signals=Signals(embed=concept_embed)
            )
        )
        assert candidates[1].id in picked.keep, name
        assert not math.isnan(picked.stats["kept_tokens"])


class CountingEmbedder:
    """A test embedder that counts the texts it embeds."""

    def __init__(self, identity: str = "concepts-v1") -> None:
        self.identity = identity
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.texts += len(texts)
        return concept_embed(texts)


def test_embeddings_persist_across_a_checkpoint(tmp_path: Path) -> None:
    first = CountingEmbedder()
    llm = FiniteMemoryLLM(EchoBackend(), policy="semantic", max_tokens=300, max_new_tokens=16,
                          embedder=first)  # fmt: skip
    llm.extend(Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(ARCHIVE * 8))
    llm.chat("Tell me more.")
    assert first.texts > 0
    before = llm.context(QUERY)
    llm.save(tmp_path / "c.json")

    same = CountingEmbedder()
    again = FiniteMemoryLLM.load(tmp_path / "c.json", EchoBackend(), embedder=same)
    assert same.texts == 0  # restored, not embedded again
    assert again.context(QUERY) == before
    assert same.texts == 1  # the query only

    other = CountingEmbedder("another-model")
    FiniteMemoryLLM.load(tmp_path / "c.json", EchoBackend(), embedder=other)
    # each distinct text once: the engine's embedding cache serves repeats
    assert other.texts == len({s.text for s in (*llm.state.history, *llm.state.archive)})


def test_damaged_embeddings_are_refused(tmp_path: Path) -> None:
    llm = FiniteMemoryLLM(EchoBackend(), policy="semantic", max_tokens=300, max_new_tokens=16,
                          embedder=CountingEmbedder())  # fmt: skip
    llm.extend([Message("user", "I adopted a beagle."), Message("assistant", "Lovely.")])
    llm.save(tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    first = next(iter(doc["vectors"]["vectors"]))
    doc["vectors"]["vectors"][first] = "not base64!"
    doc["checksum"] = checksum({k: v for k, v in doc.items() if k != "checksum"})
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="embeddings"):
        FiniteMemoryLLM.load(tmp_path / "c.json", EchoBackend(), embedder=CountingEmbedder())


def test_a_name_in_many_messages_does_not_bridge() -> None:
    # "Biscuit" (the dog) is in most turns: it would link the hit to everything.
    texts = ["I met Jess at my pottery class, Biscuit came too."]
    texts += [f"Biscuit chewed shoe number {i}." for i in range(30)]
    texts += ["Jess just moved to Denver, sadly."]
    index = RecallIndex()
    index.add(segs(texts))
    assert index.top_terms([0], exclude=set(), n=3) == ["jess"]


def test_the_budget_is_filled_by_score_per_token() -> None:
    # One long message matches the question best; two short ones each match a little less.
    # At the long one's cost, the budget holds either it or both short ones: recall takes
    # the two (more of the question's evidence per token, `PACKING`).
    long = "My beagle Biscuit " + " ".join(["and then we walked on and on"] * 4) + " home."
    texts = [long, "Biscuit is a beagle.", "Biscuit the beagle!", "The weather was grey."]
    candidates = segs(texts)
    query = "Where did my beagle Biscuit walk?"
    index = RecallIndex()
    index.add(candidates)
    found = retrieve(index, query, second_pass=False)
    best = found.best(0.15)
    assert best[0] == candidates[0].message_id  # the long one scores highest
    budget = candidates[0].tokens
    assert candidates[1].tokens + candidates[2].tokens <= budget
    picked = recall(PolicyRequest("recall", candidates, budget, query=query))
    assert set(picked.keep) == {candidates[1].id, candidates[2].id}


def test_second_pass_follows_hits_beyond_the_first_five() -> None:
    # Eight shorter turns about pottery outrank the one that names the friend; the second
    # pass still follows it (it seeds from the best `SEEDS` hits, not the best five).
    moods = "fun long hard messy calm busy loud cold".split()
    decoys = [f"Pottery class {w} today." for w in moods]
    texts = [
        *decoys,
        "I met Jess at my pottery class and we clicked right away, she is lovely.",
        "The weather was grey all week.",
        "Big news from Jess: relocating to Denver for good.",
        "We watched a film.",
    ]
    index = RecallIndex()
    candidates = segs(texts)
    index.add(candidates)
    query = "Where did my friend from pottery class move?"
    first = retrieve(index, query, second_pass=False).best(0.15)
    assert first.index(candidates[8].message_id) >= 5  # the friend's turn ranks past fifth
    assert candidates[10].message_id not in first
    found = retrieve(index, query)
    assert candidates[10].message_id in found.best(0.15)
    assert "jess" in found.expansion


def test_a_bridge_comes_back_through_its_hit_below_the_threshold() -> None:
    # The second hop shares only one of the hit's three rare names: below the recall
    # threshold on its own, it comes back through the hit, as a partner turn would.
    texts = [
        "The head teacher emailed about a trip again.",
        "I met Iris at the Riverside Pottery Club in Leeds, we clicked right away.",
    ]
    texts += [f"The weather was grey again on day {i}." for i in range(30)]
    texts += ["Iris finally sold her old car last week."]
    candidates = segs(texts)
    index = RecallIndex()
    index.add(candidates)
    query = "Who did I meet at the pottery club?"
    hop = candidates[-1].message_id
    found = retrieve(index, query)
    assert found.relevance[hop] <= 0.15 and hop in found.carried
    assert hop in found.best(0.15)
    assert retrieve(index, query, second_pass=False).best(0.15) == [candidates[1].message_id]
    picked = recall(PolicyRequest("recall", candidates, 200, query=query))
    assert set(picked.keep) == {candidates[1].id, candidates[-1].id}


def test_the_query_is_embedded_with_the_speakers_in_the_first_person() -> None:
    seen: list[str] = []

    def embed(texts: Sequence[str]) -> list[list[float]]:
        seen.extend(texts)
        return concept_embed(texts)

    index = RecallIndex()
    named = [Segment(0, 0, "user", "I adopted a beagle last weekend.", 9, name="Caroline"),
             Segment(1, 1, "assistant", "Lovely!", 4, name="Mel")]  # fmt: skip
    index.add(named, embed=embed)
    index.query_vector("What kind of pet did Caroline get for Mel's birthday?", embed)
    assert seen[-1] == "What kind of pet did I get for my birthday?"
    # a speaker who joins later is in the first person from then on (no stale memo)
    index.query_vector("Did Ann get a pet?", embed)
    index.add([Segment(2, 2, "user", "Hi all!", 4, name="Ann")], embed=embed)
    index.query_vector("Did Ann get a pet?", embed)
    assert seen[-1] == "Did I get a pet?"
