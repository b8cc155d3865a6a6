"""`recall`: the archived messages a request's budget should bring back."""

from __future__ import annotations

import bisect
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from fmai_core.deadline import check_deadline
from fmai_core.memo import PER_SET_BYTES, memo
from fmai_core.policy_api import PolicyRequest, Selection
from fmai_core.relevance.scoring import _dedup_key
from fmai_core.retrieval.index import RecallIndex, message_text
from fmai_core.retrieval.ranking import retrieve
from fmai_core.segments import Segment, find_by_id

__all__ = ["PACKING", "recall"]

# The budget is filled by score per token to this power (score / tokens ** PACKING): a
# 0/1 knapsack's greedy order, damped because fused scores are not probabilities. Two short
# hits then beat one long one of a little more score, and more of the candidates fit. On the
# recall benchmark 0.5 kept more at 10% and 5% with and without an embedder, and lost
# nothing on questions whose evidence turns are long (over 40 tokens); 1.0 lost there at 5%.
PACKING = 0.5


@dataclass(frozen=True)
class _Archive:
    """What recall derives from the candidates alone (built once per candidate set)."""

    units: dict[int, list[Segment]]  # message id -> its candidate segments
    order: list[int]  # message ids in conversation order (increasing)
    newest: dict[str, int]  # dedup key -> id of the newest segment with that text

    @cached_property
    def ids(self) -> frozenset[int]:
        """The segment ids (built when first asked for: a view made from the planner's
        change never needs them, so it costs what changed, not the archive's size)."""
        return frozenset(p.id for parts in self.units.values() for p in parts)

    def position(self, message_id: int) -> int:
        """Where the message is in `order` (a bisection: `order` is sorted)."""
        return bisect.bisect_left(self.order, message_id)


def _archive(
    candidates: Sequence[Segment],
    previous: _Archive | None = None,
    delta: tuple[Sequence[Segment], Sequence[Segment]] | None = None,
) -> _Archive:
    """The view of `candidates`, built from `previous` when they only add to it.

    `delta`, when the index knows it (the planner made `candidates` from `previous`'s
    candidates, see [`RecallIndex.derive`][fmai_core.retrieval.RecallIndex.derive]), is
    `(added, dropped)`: then the cost is that of the change, not of the archive.
    """
    if previous is not None and delta is not None:
        grown = _changed(previous, *delta)
        if grown is not None:
            return grown
    elif previous is not None:
        # Set operations run in C: the cost of a new archive is mostly what it adds.
        ids = frozenset(map(_ID, candidates))
        new_ids = ids - previous.ids
        added = find_by_id(candidates, sorted(new_ids))
        # nothing was dropped (and the candidates are in order: every new one was found)
        if len(ids) - len(new_ids) == len(previous.ids) and len(added) == len(new_ids):
            grown = _changed(previous, added, ())
            if grown is not None:
                return grown
    units: dict[int, list[Segment]] = {}
    newest: dict[str, int] = {}
    for c in candidates:
        units.setdefault(c.message_id, []).append(c)
        newest[_dedup_key(c.text)] = c.id
    return _Archive(units, sorted(units), newest)


def _changed(
    previous: _Archive, added: Sequence[Segment], dropped: Sequence[Segment]
) -> _Archive | None:
    """`previous` with `added` and without `dropped`; `None` when it must be built anew
    (a dropped segment was the newest of its text, so an older copy becomes the newest)."""
    units = dict(previous.units)  # lists are shared, never changed: copy on write
    newest = dict(previous.newest)
    order = list(previous.order)
    for d in dropped:
        if newest.get(_dedup_key(d.text)) == d.id:
            return None
        rest = [p for p in units.get(d.message_id, ()) if p.id != d.id]
        if rest:
            units[d.message_id] = rest
        elif d.message_id in units:
            del units[d.message_id]
            order.pop(bisect.bisect_left(order, d.message_id))
    for c in added:
        if c.message_id not in units:
            bisect.insort(order, c.message_id)
        units[c.message_id] = sorted([*units.get(c.message_id, ()), c], key=_segment_id)
        key = _dedup_key(c.text)
        if newest.get(key, -1) < c.id:
            newest[key] = c.id
    return _Archive(units, order, newest)


def _segment_id(segment: Segment) -> int:
    return segment.id


_ID = operator.attrgetter("id")


@memo(PER_SET_BYTES)
def _standalone_index(segments: tuple[Segment, ...]) -> RecallIndex:
    """An index over `segments`, for a policy called without the engine's (memoised)."""
    index = RecallIndex()
    index.add(segments)
    return index


def _speaker(segment: Segment) -> tuple[str, str | None]:
    return segment.role, segment.name


def recall(
    request: PolicyRequest,
    *,
    min_relevance: float = 0.15,
    neighbours: float = 0.6,
    second_pass: bool = True,
) -> Selection:
    """Choose archived messages for a `"recall"` request, within its budget.

    Args:
        request: The policy request; `request.index` is the conversation's index (one is
            built from the candidates when it is absent or lacks them).
        min_relevance: Relevance a message needs to come back on its own (the partner turn
            of one that does may come with it).
        neighbours: Share of a hit's score its question-and-answer partner gets (0: off).
        second_pass: Whether to run the query-expansion pass.

    Returns:
        The kept segment ids: whole messages only, never text already in the prompt or
        repeated by a newer candidate. Stats: `signal`, `recall` (`"fused"` or
        `"lexical"`), `hits`, `kept` (messages), `kept_tokens`, `expanded` (terms the
        second pass added).
    """
    candidates = request.candidates
    if not candidates or request.budget <= 0:
        return Selection(keep=(), stats={"signal": "none", "kept": 0, "kept_tokens": 0})
    index = request.index or _standalone_index(tuple(candidates))
    archive: _Archive = index.view(candidates, _archive)
    if any(m not in index for m in (archive.order[0], archive.order[-1])):
        index = _standalone_index(tuple(candidates))
    units = archive.units
    embed = request.signals.embed
    if embed is not None:
        missing = archive.order if not index.vectors() else []
        if missing:  # no vectors yet (a policy called on its own): embed the archive once
            texts = [message_text(units[m]) for m in missing]
            index.add_vectors(dict(zip(missing, embed(texts))))
    check_deadline(request)
    found = retrieve(
        index,
        request.query,
        units,
        embed=embed,
        min_relevance=min_relevance,
        second_pass=second_pass,
        tick=lambda: check_deadline(request),
    )
    in_prompt = {_dedup_key(s.text) for s in request.context}

    def usable(m: int) -> bool:
        return any(
            _dedup_key(p.text) not in in_prompt and archive.newest[_dedup_key(p.text)] == p.id
            for p in units[m]
        )

    # The best hits, as many as could fill the budget three times over: the rest could
    # only come back through a partner, and weaker hits are not worth looking at.
    score: dict[int, float] = {}
    reach = 0
    for m in found.best(min_relevance):
        if reach > 3 * request.budget:
            break
        if usable(m):
            score[m] = found.fused[m]
            reach += sum(p.tokens for p in units[m])
    hits = len(score)
    if neighbours > 0.0:
        for m, s in sorted(score.items(), key=lambda kv: -kv[1]):
            i, hit = archive.position(m), units[m]
            for j in (i - 1, i + 1):
                if not 0 <= j < len(archive.order):
                    continue
                n = archive.order[j]
                if abs(n - m) != 1 or score.get(n, 0.0) >= neighbours * s:
                    continue
                other = units[n]
                asking = other if j < i else hit  # the earlier turn of the pair
                if _speaker(other[0]) != _speaker(hit[0]) and "?" in asking[-1].text and usable(n):
                    score[n] = neighbours * s
    budget = request.budget
    keep: list[int] = []
    scores: dict[int, float] = {}
    kept = 0
    costs = {m: max(1, sum(p.tokens for p in units[m])) for m in score}
    for m in sorted(score, key=lambda m: (-score[m] / costs[m] ** PACKING, -m)):
        cost = costs[m]
        if cost <= budget:
            keep += [p.id for p in units[m]]
            scores.update((p.id, round(score[m], 4)) for p in units[m])
            budget -= cost
            kept += 1
    return Selection(
        keep=tuple(keep),
        scores=scores,
        stats={
            "signal": found.signal,
            "recall": "fused" if found.signal == "model" else "lexical",
            "hits": hits,
            "kept": kept,
            "kept_tokens": request.budget - budget,
            "expanded": len(found.expansion),
        },
    )
