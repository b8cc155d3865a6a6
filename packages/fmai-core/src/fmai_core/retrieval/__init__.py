"""Recall: finding the archived turns a question needs.

Every recalling policy uses the same retrieval for its `"recall"` mode (their evictions
differ; the archive search need not). It works on whole messages (turns), not on the
sentence parts a long message is split into, and it is torch-free:

1. **Lexical.** BM25 over each message's content terms, its speaker's name and its date
   (so "what did Caroline say in May?" meets Caroline's turns of May).
2. **Embeddings,** when the conversation has an embedder (`FiniteMemoryLLM(embedder=...)`
   or a backend that embeds): the cosine of the question with each message. The two are
   fused by their scores (CombSUM of normalised scores, which beat reciprocal-rank fusion
   on the recall benchmark on both of its wordings): BM25 as the share of the whole
   query's information a message matches, where a query term the conversation never used
   counts at the highest IDF (a question worded unlike anything said, a paraphrase, is
   then left mostly to the embedding, while one that names a rare word it shares with a
   turn keeps it on top); the cosine min-max scaled over its best matches (its scale
   differs from model to model).
3. **A second pass** for questions whose evidence is spread over several turns: the query
   grows by the most informative terms (names, places, dates) of the first pass's best
   hits, and the embedding query moves toward them (pseudo-relevance feedback), so "who
   did I meet at pottery?" reaches "Jess just moved to Denver" through "I met Jess at my
   pottery class". Its scores join the fusion at half weight.
4. **Partners.** A hit brings the other half of its question-and-answer pair: the
   question it answers (the other speaker's turn before it, when that asks something), or
   the reply it got (when the hit asks something), at a share of the hit's score, so the
   partner competes with weaker hits for the budget.

The budget is filled greedily by score per token (`score / tokens ** 0.5`, see
[`PACKING`][fmai_core.retrieval.recall.PACKING]: two short hits beat one long hit of a
little more score), a message at a time: a turn that was split into parts comes back
whole, or not at all. [`RecallIndex`][fmai_core.retrieval.RecallIndex]
keeps postings and embeddings incrementally, per conversation, so a turn costs what its
query matches, not what the archive holds. How much of the budget recall gets is decided
per turn by [`recall_need`][fmai_core.retrieval.recall_need] (see the planner).
"""

from __future__ import annotations

from fmai_core.deadline import PolicyTimeout, check_deadline
from fmai_core.retrieval.index import RecallIndex, message_text
from fmai_core.retrieval.ranking import Retrieval, fuse, recall_need, retrieve
from fmai_core.retrieval.recall import recall

__all__ = [
    "PolicyTimeout",
    "RecallIndex",
    "Retrieval",
    "check_deadline",
    "fuse",
    "message_text",
    "recall",
    "recall_need",
    "retrieve",
]
