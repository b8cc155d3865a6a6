"""`hybrid`: recency, importance and relevance mixed under one budget by a 0/1 knapsack."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import ClassVar

from fmai_core.deadline import tick
from fmai_core.policies.base import PolicyRequest
from fmai_core.policies.importance import mixed_scores
from fmai_core.policies.scored import ScoredPolicy
from fmai_core.segments import Segment

__all__ = ["HybridPolicy", "knapsack"]


def knapsack(
    weights: Sequence[int],
    values: Sequence[float],
    capacity: int,
    *,
    core: int = 48,
    max_cells: int = 1024,
) -> list[int]:
    """Choose items maximising total value with total weight at most `capacity`.

    Exact dynamic programming when the items that matter are few and the capacity small;
    otherwise the classic *core* approximation (Pisinger): sort by value per weight; the
    greedy solution takes a prefix and stops at a break item; items far from the break are
    almost surely in (before) or out (after) of the optimum, so they are fixed, and the DP
    runs only over the `core` items around the break. When the remaining capacity exceeds
    `max_cells`, weights are scaled down by `s` (rounded up, so the answer stays feasible) and
    a final greedy pass spends what the rounding left. At 500 segments this is a few
    milliseconds in pure Python; with at most `core` useful items and `capacity <= max_cells`
    it is exactly optimal.

    Args:
        weights: Non-negative integer cost of each item (token counts).
        values: Value of each item; items with value <= 0 are never chosen.
        capacity: The budget.
        core: Items solved exactly around the greedy break item.
        max_cells: Most DP capacity cells.

    Returns:
        Indices of the chosen items, in increasing order.

    Examples:
        >>> knapsack([5, 4, 3], [10.0, 7.0, 6.0], 7)
        [1, 2]
    """
    items = [i for i in range(len(weights)) if values[i] > 0 and weights[i] <= capacity]
    if sum(weights[i] for i in items) <= capacity:
        return items
    items.sort(key=lambda i: (-values[i] / max(weights[i], 1e-9), i))
    greedy = _fill([], items, weights, capacity)
    in_greedy = set(greedy)
    brk = next(pos for pos, i in enumerate(items) if i not in in_greedy)  # the break item
    lo = max(0, min(brk - core // 2, len(items) - core))
    pool = items[lo : lo + core]
    chosen = list(items[:lo])
    room = capacity - sum(weights[i] for i in chosen)
    scale = max(1, math.ceil(room / max_cells))
    cells = room // scale
    scaled = [math.ceil(weights[i] / scale) for i in pool]
    # Only capacities the answer can still reach matter: after an item, those at least
    # `cells` minus the weight of the items still to come (exact, and about half the cells).
    after = sum(scaled)
    best = [0.0] * (cells + 1)
    took: list[tuple[int, list[bool]]] = []  # (first cell computed, took the item there)
    for i, w in zip(pool, scaled):
        tick()
        after -= w
        if w > cells:
            took.append((cells + 1, []))
            continue
        low = max(w, cells - after)
        with_item = list(map(operator.add, best[low - w : cells + 1 - w], repeat(values[i])))
        without = best[low:]
        took.append((low, list(map(operator.gt, with_item, without))))
        best[low:] = [x if x > y else y for x, y in zip(with_item, without)]  # map(max) is slower
    c = cells
    for pos in range(len(pool) - 1, -1, -1):
        low, mask = took[pos]
        if c >= low and mask[c - low]:
            chosen.append(pool[pos])
            c -= scaled[pos]
    chosen = _fill(chosen, items, weights, capacity)
    # The DP over scaled weights can lose to plain greedy when scaling is coarse: keep the best.
    if sum(values[i] for i in greedy) > sum(values[i] for i in chosen):
        chosen = greedy
    return sorted(chosen)


def _fill(
    chosen: list[int], order: Sequence[int], weights: Sequence[int], capacity: int
) -> list[int]:
    """Add items of `order` to `chosen` while they fit (greedy by the given order)."""
    out = list(chosen)
    taken = set(out)
    room = capacity - sum(weights[i] for i in out)
    for i in order:
        if i not in taken and weights[i] <= room:
            out.append(i)
            room -= weights[i]
    return out


@dataclass(frozen=True)
class HybridPolicy(ScoredPolicy):
    """Mix recency, importance and relevance, then solve a knapsack over token cost.

    Each candidate's value is `recency_weight * recency + importance_weight * importance +
    relevance_weight * relevance` (each part in [0, 1]; importance is the model's attention
    through `signals.importance` or the information-content proxy; relevance is BM25 mixed
    with embedding cosine). Then a 0/1 knapsack
    (see [`knapsack`][fmai_core.policies.hybrid.knapsack]) keeps the set of greatest total
    value that fits the budget. In `"evict"` mode the newest `keep_recent` segments are
    always kept. In `"recall"` mode it uses the shared recall
    ([`fmai_core.retrieval`][fmai_core.retrieval]), with `min_relevance` as its threshold.

    Attributes:
        recency_weight: Weight of the recency prior (evict mode only).
        importance_weight: Weight of importance.
        relevance_weight: Weight of relevance to the incoming message.
        half_life: Recency half-life, in segments.
        keep_recent: Newest segments always kept in evict mode.
        min_relevance: Relevance a segment needs to be recalled.

    Stats: `signal`, `candidates`, `value` (total value kept), `kept`, `kept_tokens` (see
    [`ScoredPolicy`][fmai_core.policies.scored.ScoredPolicy]).
    """

    name: ClassVar[str] = "hybrid"

    recency_weight: float = 0.3
    importance_weight: float = 0.3
    relevance_weight: float = 0.4
    half_life: float = 24.0
    keep_recent: int = 2
    min_relevance: float = 0.15

    def score(self, request: PolicyRequest) -> tuple[list[float], str]:
        """Recency, importance and relevance, mixed by the weights."""
        weights = (self.importance_weight, self.relevance_weight, self.recency_weight)
        return mixed_scores(request, weights, self.half_life)

    def choose(
        self,
        candidates: Sequence[Segment],
        values: Sequence[float],
        budget: int,
        reserved: frozenset[int],
    ) -> list[int]:
        """The best-value set of the unreserved candidates that fits: a 0/1 knapsack."""
        pool = [i for i, c in enumerate(candidates) if c.id not in reserved]
        chosen = knapsack([candidates[i].tokens for i in pool], [values[i] for i in pool], budget)
        return [candidates[pool[j]].id for j in chosen]
