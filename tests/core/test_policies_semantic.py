"""`semantic`: topic clusters are real, and selection covers topics besides the query's."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from fmai_core.policies import PolicyRequest, Signals
from fmai_core.policies.semantic import SemanticPolicy
from fmai_core.relevance import cluster, terms, tfidf_vectors
from fmai_core.segments import Segment

TOPICS = {
    "cooking": "pasta garlic oven recipe sauce basil dough skillet soup spices".split(),
    "space": "rocket orbit planet telescope galaxy launch astronaut moon comet crater".split(),
    "garden": "seeds soil compost roses watering shovel weeds lawn tulips hedge".split(),
    "code": "python bug compiler function variable deploy server database commit".split(),
}


def topical(seed: int, per_topic: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, truth = [], []
    for _ in range(per_topic):
        for name, words in TOPICS.items():
            a, b, c = rng.sample(words, 3)
            texts.append(f"I keep thinking about the {a}, the {b} and the {c}.")
            truth.append(name)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [truth[i] for i in order]


def test_clusters_recover_the_topics() -> None:
    texts, truth = topical(1, 30)
    labels = cluster(tfidf_vectors([terms(t) for t in texts]), 4)
    for label in set(labels):
        members = Counter(t for t, lab in zip(truth, labels) if lab == label)
        assert label >= 0
        assert members.most_common(1)[0][1] / sum(members.values()) >= 0.9  # purity
    assert len(set(labels)) == 4


def test_selection_covers_topics_beyond_the_query() -> None:
    texts, truth = topical(2, 25)
    candidates = tuple(Segment(i, i, "user", t, 12) for i, t in enumerate(texts))
    request = PolicyRequest("evict", candidates, 12 * 10, query="any good pasta recipe?")
    selection = SemanticPolicy(keep_recent=0).select(request)
    kept_topics = Counter(truth[i] for i in selection.keep)
    assert set(kept_topics) == set(TOPICS), "every topic is represented"
    assert kept_topics.most_common(1)[0][0] == "cooking", "the query's topic gets the most"
    assert selection.stats["topics_kept"] >= 4
    four = SemanticPolicy(topics=4, keep_recent=0).select(request)
    assert four.stats["topics"] == 4
    assert four.stats["topics_kept"] == 4
    assert {truth[i] for i in four.keep} == set(TOPICS)
    # Relevance alone (no coverage) would spend the whole budget on cooking.
    only_relevance = SemanticPolicy(relevance_weight=1.0, topics=1, keep_recent=0).select(request)
    assert {truth[i] for i in only_relevance.keep} == {"cooking"}


def test_model_embeddings_are_used_and_reported() -> None:
    texts, truth = topical(3, 6)
    calls: list[int] = []

    def embed(items: Sequence[str]) -> list[list[float]]:
        calls.append(len(items))
        return [[float(any(w in t for w in TOPICS[n])) for n in TOPICS] for t in items]

    candidates = tuple(Segment(i, i, "user", t, 12) for i, t in enumerate(texts))
    request = PolicyRequest("evict", candidates, 12 * 8, query="", signals=Signals(embed=embed))
    selection = SemanticPolicy(keep_recent=0).select(request)
    assert calls == [len(texts) + 1]
    assert selection.stats["signal"] == "model"
    assert {truth[i] for i in selection.keep} == set(TOPICS)


def test_recall_scores_only_the_segments_that_match() -> None:
    texts, truth = topical(3, 25)
    facts = [
        "My locker code at the gym is 4721.",
        "The gym changed my locker code last week.",
        "I wrote the locker code on a sticky note.",
    ]
    texts += facts
    truth += ["fact"] * len(facts)
    candidates = tuple(Segment(i, i, "user", t, 12) for i, t in enumerate(texts))
    request = PolicyRequest("recall", candidates, 36, query="What is my locker code?")
    selection = SemanticPolicy().select(request)
    assert {truth[i] for i in selection.keep} == {"fact"}
    # Recall is shared by the recalling policies (fmai_core.retrieval): of the 100 others
    # of the archive none passes the threshold; the three facts are the only hits.
    assert selection.stats["hits"] == 3
