"""The torch-free relevance signals: terms, BM25, hashed embeddings, topics, information."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmai_core.relevance import (
    LexicalIndex,
    cluster,
    cosine,
    hashed_embedding,
    information,
    project,
    query_relevance,
    recency,
    stem,
    terms,
)


def test_stem_and_terms() -> None:
    assert [stem(w) for w in ["names", "called", "running", "stories", "grew", "went"]] == [
        "name",
        "call",
        "run",
        "story",
        "grow",
        "go",
    ]
    assert terms("What is my sister's name?") == ("sister", "name")
    assert terms("The code is 4821.") == ("code", "4821")


def test_bm25_prefers_rare_terms_and_is_normalised() -> None:
    docs = ["the weather is nice", "nice weather again", "my sister Ada", "nice day"]
    index = LexicalIndex([terms(d) for d in docs])
    assert index.idf("sister") > index.idf("nice")
    scores = index.normalized_scores(terms("nice sister"))
    assert max(range(4), key=scores.__getitem__) == 2
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert index.normalized_scores(terms("the of and")) == [0.0] * 4


@given(st.text(max_size=80), st.text(max_size=80))
def test_hashed_embeddings_are_unit_vectors_and_cosine_is_bounded(a: str, b: str) -> None:
    va, vb = hashed_embedding(a), hashed_embedding(b)
    for v in (va, vb):
        assert not v or abs(sum(w * w for w in v.values()) - 1.0) < 1e-9
    assert -1e-9 <= cosine(va, vb) <= 1.0 + 1e-9


def test_hashed_embeddings_relate_word_forms() -> None:
    base = hashed_embedding("my locker combination")
    assert cosine(base, hashed_embedding("the lockers combinations")) > 0.5
    assert cosine(base, hashed_embedding("pasta with garlic")) == 0.0


def test_hashed_embeddings_do_not_depend_on_the_hash_seed() -> None:
    code = (
        "import json; from fmai_core.relevance import hashed_embedding; "
        "print(json.dumps(sorted(hashed_embedding('My sister is called Ada.').items())))"
    )
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        outputs.append(json.loads(run.stdout))
    assert outputs[0] == outputs[1]


def test_query_relevance_finds_the_fact() -> None:
    texts = ["Nice weather today.", "My sister is called Ada.", "Pasta again tonight?"]
    scores, vectors = query_relevance("What is my sister's name?", texts)
    assert len(vectors) == 3
    assert max(range(3), key=scores.__getitem__) == 1
    assert scores[0] < 0.1 and scores[2] < 0.1  # char-trigram overlap only, below recall's bar


def test_information_and_recency() -> None:
    scores = information(["ok, thanks!", "I moved to Tartu in 2019.", "Is it raining?"])
    assert scores[1] == 1.0
    assert scores[0] < scores[1] and scores[2] < scores[1]
    assert information([]) == []
    assert recency(3, 1.0) == [0.25, 0.5, 1.0]
    assert recency(2, 0.0) == [0.0, 1.0]


def test_cluster_edge_cases() -> None:
    assert cluster([], 3) == []
    assert cluster([{}, {}], 2) == [-1, -1]
    assert cluster([{"a": 1.0}], 0) == [-1]
    same = [{"a": 1.0}, {"a": 1.0}, {"a": 1.0}]
    assert cluster(same, 3) == [0, 0, 0]


def test_projection_keeps_directions() -> None:
    rng = random.Random(2)
    a = [rng.gauss(0, 1) for _ in range(384)]
    b = [x + rng.gauss(0, 0.1) for x in a]  # a near-copy
    c = [rng.gauss(0, 1) for _ in range(384)]  # unrelated
    pa, pb, pc = project(a, 32), project(b, 32), project(c, 32)
    assert project([2 * x for x in a], 32) == pytest.approx(pa)
    assert abs(sum(w * w for w in pa.values()) - 1.0) < 1e-9
    assert cosine(pa, pb) > 0.95
    assert abs(cosine(pa, pc)) < 0.6


def test_dense_vectors_cluster_too() -> None:
    rng = random.Random(4)
    centres = [[rng.gauss(0, 1) for _ in range(64)] for _ in range(3)]
    vectors, truth = [], []
    for i in range(90):
        centre = centres[i % 3]
        vectors.append(project([x + rng.gauss(0, 0.3) for x in centre], 32))
        truth.append(i % 3)
    labels = cluster(vectors, 3, top=32)
    pairs = {(t, lab) for t, lab in zip(truth, labels)}
    assert len(pairs) == 3, "each true cluster maps to exactly one label"
