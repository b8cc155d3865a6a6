"""Planning one turn: eviction, recall and the exact budget check, with no side effect."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fmai_core.config import MemoryConfig
from fmai_core.context import ContextBuilder
from fmai_core.deadline import PolicyTimeout, deadline_scope
from fmai_core.errors import MessageTooLongError
from fmai_core.memory import MemoryState, archive_value
from fmai_core.messages import Message, encodable
from fmai_core.policies.base import Policy, PolicyRequest, Selection, Signals, enforce_budget
from fmai_core.policies.sliding import SlidingWindowPolicy
from fmai_core.retrieval import RecallIndex, recall_need
from fmai_core.segments import Segment, find_by_id
from fmai_core.tokens import TokenCounter

__all__ = ["Plan", "Planner"]

_SLIDING = SlidingWindowPolicy()
# The adaptive split of the free budget (recall_fraction=None): recalled memory gets between
# these shares, by how much of the question's evidence lies outside the recent history.
# A question whose best matches are all archived leaves the recent history a fifth. A tenth
# kept more on the recall benchmark (hybrid with MiniLM at 5%: 75.7% -> 77.4%), but a
# distant question then evicts history nearly every turn, so a recalled block of
# recall_layout="stable" no longer stays between evictions (tests/core/test_recall_layout).
MIN_RECALL_SHARE = 0.1
MAX_RECALL_SHARE = 0.8
# From this share on, the question is about the past: recall may use all the free budget.
DISTANT_SHARE = 0.5


def _segment_id(segment: Segment) -> int:
    return segment.id


def _drop_order(segment: Segment) -> tuple[float, int]:
    return archive_value(segment), segment.id


@dataclass(frozen=True)
class Plan:
    """The outcome of planning a turn: the prompt and the state to commit if the turn succeeds."""

    messages: list[Message]
    prompt_tokens: int
    state: MemoryState
    recalled: tuple[Segment, ...]
    evicted_tokens: int
    evicted: bool
    policy: str
    policy_ms: float
    fallback: bool
    policy_stats: dict[str, Any] = field(default_factory=dict)
    #: Segments moved from the history to the archive by this plan (see `TurnTrace`).
    evicted_segments: tuple[Segment, ...] = ()
    #: Relevance of each recalled segment, by id, as the policy's recall reported it.
    recall_scores: dict[int, float] = field(default_factory=dict)
    #: Archived segments a full archive dropped in this plan.
    dropped: int = 0
    #: Those segments (the engine forgets them in the recall index when the turn commits).
    dropped_segments: tuple[Segment, ...] = ()
    #: Tokens of the plan's archive (`state.archive`).
    archive_tokens: int = 0

    @property
    def signals_off(self) -> bool:
        """A policy call with model signals ran past `max_policy_ms` in this plan.

        The engine then switches model signals off for the rest of the conversation, when
        (and only if) the turn commits: `context()` and a failed turn change nothing.
        """
        return "model_signals" in self.policy_stats or "recall_model_signals" in self.policy_stats


def _run_with_deadline(
    fn: Callable[[], Selection], deadline_ms: float | None
) -> tuple[Selection | None, str | None]:
    """Run `fn`; give up at `deadline_ms` (the worker is abandoned: policies are pure).

    The deadline is set for the worker thread (see [`fmai_core.deadline`][fmai_core.deadline])
    so that built-in policies stop soon after it; a result that arrives after it is a miss.
    """
    if deadline_ms is None:
        try:
            return fn(), None
        except Exception as exc:  # a policy bug must not lose the turn
            import logging  # only on failure: logging costs ~4 ms to import

            logging.getLogger("fmai").exception("fmai: memory policy failed; using sliding")
            return None, type(exc).__name__
    start = time.perf_counter()
    deadline = start + deadline_ms / 1000
    box: dict[str, Any] = {}

    def work() -> None:
        with deadline_scope(deadline):
            try:
                box["result"] = fn()
            except PolicyTimeout:
                box["late"] = True
            except Exception as exc:
                box["error"] = type(exc).__name__
            box["at"] = time.perf_counter()

    worker = threading.Thread(target=work, name="fmai-policy", daemon=True)
    worker.start()
    worker.join(deadline_ms / 1000)
    missed = f"deadline of {deadline_ms:g} ms exceeded"
    if worker.is_alive() or box.get("late") or box.get("at", math.inf) > deadline:
        return None, missed
    if "error" in box:
        import logging

        logging.getLogger("fmai").error(
            "fmai: memory policy failed (%s); using sliding", box["error"]
        )
        return None, f"policy raised {box['error']}"
    return box["result"], None


def template_note(counter: TokenCounter, room: int) -> str:
    """A sentence for a budget error when the backend's fixed cost of a prompt (its
    template beyond the messages, `TokenCounter.base`) takes a large share of `room`: a
    hosted backend fits it from the provider's reported usage, so one wrong report (or a
    provider that adds a long hidden prompt) leaves no room for any message."""
    base = counter.base
    if base <= max(64, room // 4):
        return ""
    return (
        f" The backend counts {base} tokens in every prompt beyond its messages (its "
        "template; a hosted backend learns this from the usage the provider reports, "
        "which includes any prompt the provider adds): if the provider's usage figures are "
        "wrong, check the server, or use a new backend object to count afresh."
    )


@dataclass
class Planner:
    """Plans turns for one conversation (configuration only; state is passed in).

    Attributes:
        policy: The memory policy.
        counter: Counts tokens under the backend.
        builder: Lays out the prompt.
        config: The memory settings (budget, low-water mark, recall share, archive cap,
            policy deadline).
        signals: The model signals the policy gets (the engine may switch them off).
        index: The conversation's recall index.
    """

    policy: Policy
    counter: TokenCounter
    builder: ContextBuilder
    config: MemoryConfig
    signals: Signals = field(default_factory=Signals)
    index: RecallIndex = field(default_factory=RecallIndex)
    # (archive, its tokens) of the last few archives planned: an archive's total is carried
    # from one plan to the next, so no turn sums thousands of archived segments.
    _totals: list[tuple[tuple[Segment, ...], int]] = field(
        default_factory=list, repr=False, compare=False
    )
    # (archive, its segments' (drop value, id) sorted) of the last few archives, with an
    # archive_limit: what a full archive drops first is carried the same way, so no
    # eviction scores thousands of archived segments again.
    _ranks: list[tuple[tuple[Segment, ...], list[tuple[float, int]]]] = field(
        default_factory=list, repr=False, compare=False
    )

    def recall_share(self, state: MemoryState, query: str, available: int) -> float:
        """The share of the free budget that recalled memory gets this turn.

        A fixed `recall_fraction` when one is set; otherwise it moves with the query,
        from `MIN_RECALL_SHARE` for a follow-up (its best matches are in the recent
        history, or it matches nothing) to `MAX_RECALL_SHARE` for a question about the
        distant past (its best matches are archived), see
        [`recall_need`][fmai_core.retrieval.recall_need].
        """
        if not self.policy.recalls:
            return 0.0
        if self.config.recall_fraction is not None:
            return self.config.recall_fraction
        # Recent: the history that stays in the prompt at the smallest share (all of it, or
        # what an eviction would keep of its newest part); older: the rest and the archive.
        room = available * (1.0 - MIN_RECALL_SHARE)
        recent: set[int] = set()
        if sum(s.tokens for s in state.history) <= room:
            recent = {s.message_id for s in state.history}
        else:
            left = self.config.low_water * room
            for s in reversed(state.history):
                if s.tokens > left:
                    break
                left -= s.tokens
                recent.add(s.message_id)
        if not state.archive and len(recent) == len({s.message_id for s in state.history}):
            return MIN_RECALL_SHARE  # nothing is, or is about to be, out of the prompt
        need = recall_need(self.index, query, recent, embed=self.signals.embed)
        return MIN_RECALL_SHARE + (MAX_RECALL_SHARE - MIN_RECALL_SHARE) * need

    def _select(self, request: PolicyRequest) -> tuple[Selection, float, bool, dict[str, Any]]:
        start = time.perf_counter()
        limit = self.config.max_policy_ms
        if limit is not None:
            request = replace(request, deadline=start + limit / 1000)
        result, error = _run_with_deadline(lambda: self.policy.select(request), limit)
        fallback = result is None
        degraded = False
        if error and error.startswith("deadline") and request.signals != Signals():
            # Model signals (a forward pass, a generation) are what usually blows the
            # deadline on a CPU: the engine switches them off when the turn commits
            # (`Plan.signals_off`); planning itself changes nothing.
            degraded = True
        if result is None:  # the fallback: sliding evicts, and recalls nothing
            if request.mode == "recall":
                result = Selection(keep=())
            else:
                result = _SLIDING.select(replace(request, signals=Signals()))
        result = enforce_budget(request, result)  # the contract, for every policy
        ms = (time.perf_counter() - start) * 1000
        stats = dict(result.stats)
        if error:
            stats["fallback_reason"] = error
        if degraded:
            stats["model_signals"] = "off: past max_policy_ms, torch-free proxies from now on"
        return result, ms, fallback, stats

    def system_cost(self, state: MemoryState, summary: Segment | None) -> int:
        text = self.builder.system_text(self.config.system_prompt, state.pinned, summary)
        return self.counter.message(text) if text is not None else 0

    def archive_tokens(self, archive: tuple[Segment, ...]) -> int:
        """Tokens of `archive`: carried from the plan that made it, else summed once."""
        for known, total in self._totals:
            if known is archive:
                return total
        total = sum(s.tokens for s in archive)
        self._remember(archive, total)
        return total

    def _remember_ranks(
        self, archive: tuple[Segment, ...], ranked: list[tuple[float, int]]
    ) -> None:
        self._ranks.insert(0, (archive, ranked))
        del self._ranks[4:]

    def _remember(self, archive: tuple[Segment, ...], total: int) -> None:
        self._totals.insert(0, (archive, total))
        del self._totals[4:]

    def _ranked(self, archive: tuple[Segment, ...]) -> list[tuple[float, int]]:
        """`archive`'s `_drop_order` keys, sorted: carried from the plan that made it, else
        computed once."""
        for known, ranked in self._ranks:
            if known is archive:
                return ranked
        return sorted(map(_drop_order, archive))

    def _archive(
        self, archive: tuple[Segment, ...], add: Sequence[Segment]
    ) -> tuple[tuple[Segment, ...], list[Segment]]:
        total = self.archive_tokens(archive) + sum(s.tokens for s in add)
        merged = list(archive)  # sorted by id; what is added is small
        for segment in add:
            bisect.insort(merged, segment, key=_segment_id)
        limit = self.config.archive_limit
        ranked: list[tuple[float, int]] = []
        if limit is not None:
            ranked = list(self._ranked(archive))
            for segment in add:
                bisect.insort(ranked, _drop_order(segment))
        if limit is None or len(merged) <= limit:
            out = tuple(merged)
            self._remember(out, total)
            if limit is not None:
                self._remember_ranks(out, ranked)
            self.index.derive(out, archive, add)
            return out, []
        excess = len(merged) - limit
        # the lowest-value segments (oldest first among equals), as heapq.nsmallest over
        # the archive would find them, from the carried order
        dropped = find_by_id(merged, [i for _, i in ranked[:excess]])
        drop = {s.id for s in dropped}
        for at in sorted(
            (bisect.bisect_left(merged, s.id, key=_segment_id) for s in dropped), reverse=True
        ):
            del merged[at]
        out = tuple(merged)
        self._remember(out, total - sum(s.tokens for s in dropped))
        self._remember_ranks(out, ranked[excess:])
        dropped_old = [s for s in dropped if s not in add]  # added and dropped: never there
        self.index.derive(out, archive, [s for s in add if s.id not in drop], dropped_old)
        return out, dropped

    def plan(self, state: MemoryState, new: Sequence[Segment], query: str) -> Plan:
        """Plan a turn whose new user message is `new` (already segmented).

        Four steps, none of which changes anything outside the returned plan: the budget
        (what is free once the system message, the new message and the reply are paid
        for), eviction (history past its high-water mark goes to the archive, in a block
        down to the low-water mark), recall (archived messages for the query, in the
        recall share of the budget), and the exact fit (the backend's own count of the
        rendered prompt is the authority).
        """
        new_text = new[0].text + "".join(s.sep + s.text for s in new[1:]) if new else ""
        summary_dropped = False
        try:
            available = self._budget(state, new_text)
        except MessageTooLongError:
            if state.summary is None:
                raise
            # The rolling summary is derived: what it summarises is in the archive. A
            # message that fits without it is planned without it (raises if even then not).
            available = self._budget(replace(state, summary=None), new_text)
            summary_dropped = True
        share = self.recall_share(state, query, available)
        reserve = int(available * share)
        turn = _Turn(state)
        if summary_dropped:
            turn.summary = None
            turn.stats["summary_dropped"] = True
        if sum(s.tokens for s in state.history) > available - reserve:
            self._evict(turn, query, available - reserve)
        if share >= DISTANT_SHARE:  # a question about the past may use all that is free
            reserve = max(reserve, available - sum(s.tokens for s in turn.history))
        stable = self.config.recall_layout == "stable" and self.policy.recalls
        if stable and not turn.evicted:
            # Blocks shown with earlier messages stay (the prompt stays append-only) until
            # an eviction, which changes the prompt anyway. The recall sees them as
            # candidates (see `_recall`): a follow-up recalls within what they leave of the
            # reserve; a question about the past recalls with all of it, and the shown
            # blocks it did not pick (newest first) give way to its recall where both do
            # not fit.
            turn.shown = self._still_shown(turn)
            turn.shown_yield = share >= DISTANT_SHARE
        if self.policy.recalls and turn.archive and reserve > 0:
            self._recall(turn, query, reserve)
        if self.policy.recalls:
            turn.stats["recall_share"] = round(share, 3)
        messages, prompt_tokens = self._fit(turn, new_text)
        shown: tuple[tuple[int, tuple[int, ...]], ...] = ()
        if stable:
            kept = {s.message_id for s in turn.history}
            shown = tuple(
                (mid, tuple(s.id for s in block))
                for mid, block in turn.shown.items()
                if mid in kept
            )
            if turn.recalled and new:
                shown += ((new[0].message_id, tuple(s.id for s in turn.recalled)),)
        new_state = replace(
            state,
            summary=turn.summary,
            history=tuple(turn.history),
            archive=turn.archive,
            archive_dropped=state.archive_dropped + turn.dropped,
            shown=shown,
        )
        return Plan(
            messages=messages,
            prompt_tokens=prompt_tokens,
            state=new_state,
            recalled=tuple(turn.recalled),
            evicted_tokens=turn.evicted_tokens,
            evicted=turn.evicted,
            policy="sliding" if turn.fallback else self.policy.name,
            policy_ms=turn.policy_ms,
            fallback=turn.fallback,
            policy_stats=turn.stats,
            evicted_segments=tuple(turn.gone),
            recall_scores={s.id: turn.scores[s.id] for s in turn.recalled if s.id in turn.scores},
            dropped=turn.dropped,
            dropped_segments=tuple(turn.dropped_segments),
            archive_tokens=self.archive_tokens(turn.archive),
        )

    def _budget(self, state: MemoryState, new_text: str) -> int:
        """Tokens free for history and recall; raises if the new message cannot fit."""
        new_cost = self.counter.message(self.builder.user_text((), new_text))
        fixed = self.counter.base + self.system_cost(state, state.summary)
        c = self.config
        available = c.room - fixed - new_cost
        if available < 0:
            room = c.room - fixed - self.counter.message_overhead
            raise MessageTooLongError(
                f"The message needs {new_cost - self.counter.message_overhead} tokens but at most "
                f"{max(room, 0)} fit (max_tokens={c.max_tokens}, max_new_tokens="
                f"{c.max_new_tokens}, system prompt and pins included). Shorten the message "
                f"or raise max_tokens.{template_note(self.counter, c.room)} Nothing was changed.",
                tokens=new_cost,
                available=max(room, 0),
            )
        return available

    def _evict(self, turn: _Turn, query: str, high_water: int) -> None:
        """Ask the policy which history to keep, down to the low-water mark; archive the rest."""
        state, history, summary = turn.state, turn.history, turn.summary
        old_summary = summary.tokens if summary else 0
        budget = max(0, int(self.config.low_water * (high_water + old_summary)) - old_summary)
        request = PolicyRequest(
            mode="evict",
            candidates=tuple(history),
            budget=budget,
            query=query,
            signals=self.signals,
            summary=summary,
            context=state.pinned,
            count_text=self.counter.text,
            turn=state.turn,
            index=self.index,
        )
        selection, ms, fb, stats = self._select(request)
        turn.policy_ms += ms
        turn.fallback |= fb
        turn.stats.update(stats)
        keep = set(selection.keep)
        if selection.summary is not None and not fb:
            # a model wrote it: a lone surrogate is replaced (as in a reply), not refused
            text = encodable(selection.summary.strip())
            turn.summary = (
                Segment(-1, -1, "system", text, self.counter.text(text), "summary", state.turn)
                if text
                else None
            )
        kept = [s for s in history if s.id in keep]  # within the budget: see _select
        self._move_to_archive(turn, [s for s in history if s.id not in keep])
        turn.history = kept

    def _move_to_archive(self, turn: _Turn, gone: Sequence[Segment]) -> None:
        if not gone:
            return
        gone_ids = {s.id for s in gone}
        turn.history = [s for s in turn.history if s.id not in gone_ids]
        turn.evicted_tokens += sum(s.tokens for s in gone)
        turn.gone += gone
        turn.evicted = True
        turn.archive, dropped = self._archive(turn.archive, gone)
        turn.dropped += len(dropped)
        turn.dropped_segments += dropped

    def _still_shown(self, turn: _Turn) -> dict[int, list[Segment]]:
        """The recalled blocks of `recall_layout="stable"` that stay: those of user messages
        still in the history, whose segments are all still in the archive."""
        users = {s.message_id for s in turn.history if s.role == "user"}
        out: dict[int, list[Segment]] = {}
        for mid, ids in turn.state.shown:
            if mid in users:
                block = find_by_id(turn.archive, ids)
                if len(block) == len(ids):
                    out[mid] = block
        return out

    def _block_cost(self, block: Sequence[Segment]) -> int:
        """Tokens a recalled block adds to the user message it is shown with."""
        return self.counter.text(self.builder.user_text(block, ""))

    def _recall(self, turn: _Turn, query: str, reserve: int) -> None:
        """Ask the policy which archived segments to bring back within `reserve` tokens.

        With blocks shown with earlier messages (`recall_layout="stable"`), the whole
        archive is asked, shown segments included ("sticky" recall): what it picks that is
        shown already stays where it is, takes its share of the reserve and is not recalled
        again; only the rest goes into the new message. So a question about the past whose
        evidence is partly shown recalls that much less that is new (new tokens to prefill),
        and the blocks it picked are not the ones that give way in `_fit`. A follow-up's new
        recall is cut, worst first, to what all the shown blocks leave of its reserve.
        """
        header = self.counter.text(self.builder.recall_header + "\n" + self.builder.recall_footer)
        candidates = turn.archive
        taken = {s.id for block in turn.shown.values() for s in block}
        request = PolicyRequest(
            mode="recall",
            candidates=candidates,
            budget=max(0, reserve - header - 2),
            query=query,
            signals=self.signals,
            summary=turn.summary,
            context=turn.state.pinned + tuple(turn.history),
            count_text=self.counter.text,
            turn=turn.state.turn,
            index=self.index,
        )
        selection, ms, fb, stats = self._select(request)
        turn.policy_ms += ms
        turn.fallback |= fb
        turn.stats.update({f"recall_{k}": v for k, v in stats.items()})
        turn.rank = {sid: i for i, sid in enumerate(selection.keep)}  # best first
        turn.scores = dict(selection.scores) if not fb else {}
        picked = find_by_id(candidates, turn.rank)
        if taken:
            turn.picked_shown = {
                mid for mid, block in turn.shown.items() if any(s.id in turn.rank for s in block)
            }
            picked = [s for s in picked if s.id not in taken]
            turn.stats["recall_kept_shown"] = len(turn.picked_shown)
        turn.recalled = sorted(picked, key=_segment_id)
        if taken and not turn.shown_yield:
            room = reserve - sum(self._block_cost(b) for b in turn.shown.values())
            while turn.recalled and self._block_cost(turn.recalled) > room:
                self._drop_worst_recalled(turn)

    def _drop_worst_recalled(self, turn: _Turn) -> None:
        """Drop the least relevant recalled message (whole)."""
        worst = max(turn.recalled, key=lambda s: turn.rank.get(s.id, -1))
        turn.recalled = [s for s in turn.recalled if s.message_id != worst.message_id]

    def _fit(self, turn: _Turn, new_text: str) -> tuple[list[Message], int]:
        """Render the prompt and make it fit by the backend's own count.

        Past the budget, the least relevant recalled message goes first (whole), then the
        newest block shown with an earlier message (`recall_layout="stable"`; for a
        question about the past, the shown blocks go first); then
        history is evicted in a block, oldest first, down to the low-water mark of what
        fits, so that a count that differs slightly from the segments' sum does not evict
        one segment per turn.
        """
        state, c = turn.state, self.config
        while True:
            messages = self.builder.render(
                c.system_prompt,
                state.pinned,
                turn.summary,
                turn.history,
                turn.recalled,
                new_text,
                turn.shown,
            )
            prompt_tokens = self.counter.prompt(messages)
            over = prompt_tokens + c.max_new_tokens - c.max_tokens
            if over <= 0:
                return messages, prompt_tokens
            unpicked = [mid for mid in turn.shown if mid not in turn.picked_shown]
            if turn.shown and (turn.shown_yield or not turn.recalled):
                # Blocks that hold none of this turn's picks go first, newest first.
                del turn.shown[max(unpicked or turn.shown)]
                # The prompt is not append-only this turn (TurnStats.policy_stats says so).
                turn.stats["recall_shown_dropped"] = turn.stats.get("recall_shown_dropped", 0) + 1
            elif turn.recalled:
                self._drop_worst_recalled(turn)
            elif turn.history:
                left = sum(s.tokens for s in turn.history) - over
                target = int(c.low_water * max(left, 0))
                gone: list[Segment] = []
                total = sum(h.tokens for h in turn.history)
                for s in turn.history:
                    if total <= target:
                        break
                    gone.append(s)
                    total -= s.tokens
                self._move_to_archive(turn, gone or turn.history[:1])
            elif turn.summary is not None:  # derived, its sources archived: it goes last
                turn.summary = None
                turn.stats["summary_dropped"] = True
            else:
                raise MessageTooLongError(
                    f"The prompt needs {prompt_tokens} tokens plus max_new_tokens="
                    f"{c.max_new_tokens}, over max_tokens={c.max_tokens}, with all history "
                    "evicted. Shorten the message or raise max_tokens."
                    f"{template_note(self.counter, c.room)} Nothing was changed.",
                    tokens=prompt_tokens,
                    available=c.room,
                )


@dataclass
class _Turn:
    """The working state of one plan (never visible outside it)."""

    state: MemoryState
    history: list[Segment] = field(default_factory=list)
    archive: tuple[Segment, ...] = ()
    summary: Segment | None = None
    recalled: list[Segment] = field(default_factory=list)
    #: Blocks shown with earlier user messages that stay (by message id; stable layout).
    shown: dict[int, list[Segment]] = field(default_factory=dict)
    #: Past the budget, shown blocks go before this turn's recall (a question about the past).
    shown_yield: bool = False
    #: Shown blocks (by message id) that hold a segment this turn's recall picked.
    picked_shown: set[int] = field(default_factory=set)
    rank: dict[int, int] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    gone: list[Segment] = field(default_factory=list)
    evicted_tokens: int = 0
    evicted: bool = False
    dropped: int = 0
    dropped_segments: list[Segment] = field(default_factory=list)
    policy_ms: float = 0.0
    fallback: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.history = list(self.state.history)
        self.archive = self.state.archive
        self.summary = self.state.summary
