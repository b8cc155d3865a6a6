"""Recall: finding the archived turns a question needs.

Every recalling policy uses the same retrieval for its `"recall"` mode (their evictions
differ; the archive search need not). It works on whole messages (turns), not on the
sentence parts a long message is split into, and it is torch-free:

1. **Lexical.** BM25 over each message's content terms, its speaker's name and its date
   (so "what did Caroline say in May?" meets Caroline's turns of May).
2. **Embeddings,** when the conversation has an embedder (`FiniteMemoryLLM(embedder=...)`
   or a backend that embeds): the cosine of the question with each message. The two
   rankings are fused by weighted reciprocal-rank fusion (Cormack et al., 2009), which needs
   no calibration between BM25 scores and cosines.
3. **A second pass** for questions whose evidence is spread over several turns: the query
   grows by the most informative terms (names, places, dates) of the first pass's best
   hits, and the embedding query moves toward them (pseudo-relevance feedback), so "who
   did I meet at pottery?" reaches "Jess just moved to Denver" through "I met Jess at my
   pottery class". Its rankings join the fusion at half weight.
4. **Partners.** A hit brings the other half of its question-and-answer pair: the
   question it answers (the other speaker's turn before it, when that asks something), or
   the reply it got (when the hit asks something), at a share of the hit's score, so the
   partner competes with weaker hits for the budget.

The budget is filled greedily in that order, a message at a time: a turn that was split
into parts comes back whole, or not at all. [`RecallIndex`][fmai_core.retrieval.RecallIndex]
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
