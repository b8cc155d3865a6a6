"""Planning one turn: eviction, recall and the exact budget check, with no side effect."""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fmai_core.context import ContextBuilder
from fmai_core.deadline import PolicyTimeout, deadline_scope
from fmai_core.errors import MessageTooLongError
from fmai_core.memory import MemoryState, archive_value
from fmai_core.messages import Message
from fmai_core.policies.base import Policy, PolicyRequest, Selection, Signals
from fmai_core.policies.sliding import SlidingWindowPolicy
from fmai_core.retrieval import RecallIndex, recall_need
from fmai_core.segments import Segment
from fmai_core.tokens import TokenCounter

__all__ = ["Plan", "Planner"]

_SLIDING = SlidingWindowPolicy()
# The adaptive split of the free budget (recall_fraction=None): recalled memory gets between
# these shares, by how much of the question's evidence lies outside the recent history.
MIN_RECALL_SHARE = 0.1
MAX_RECALL_SHARE = 0.8
# From this share on, the question is about the past: recall may use all the free budget.
DISTANT_SHARE = 0.5


def _segment_id(segment: Segment) -> int:
    return segment.id


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
        logging.getLogger("fmai").error(
            "fmai: memory policy failed (%s); using sliding", box["error"]
        )
        return None, f"policy raised {box['error']}"
    return box["result"], None


@dataclass
class Planner:
    """Plans turns for one conversation (configuration only; state is passed in)."""

    policy: Policy
    counter: TokenCounter
    builder: ContextBuilder
    system_prompt: str | None
    max_tokens: int
    max_new_tokens: int
    low_water: float
    recall_fraction: float | None
    archive_limit: int | None
    max_policy_ms: float | None
    signals: Signals
    index: RecallIndex = field(default_factory=RecallIndex)

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
        if self.recall_fraction is not None:
            return self.recall_fraction
        # Recent: the history that stays in the prompt at the smallest share (all of it, or
        # what an eviction would keep of its newest part); older: the rest and the archive.
        room = available * (1.0 - MIN_RECALL_SHARE)
        recent: set[int] = set()
        if sum(s.tokens for s in state.history) <= room:
            recent = {s.message_id for s in state.history}
        else:
            left = self.low_water * room
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
        if self.max_policy_ms is not None:
            request = replace(request, deadline=start + self.max_policy_ms / 1000)
        result, error = _run_with_deadline(lambda: self.policy.select(request), self.max_policy_ms)
        fallback = result is None
        degraded = False
        if error and error.startswith("deadline") and request.signals != Signals():
            # Model signals (a forward pass, a generation) are what usually blows the
            # deadline on a CPU: the engine switches them off when the turn commits
            # (`Plan.signals_off`); planning itself changes nothing.
            degraded = True
        if result is None:
            result = _SLIDING.select(replace(request, signals=Signals()))
            if request.mode == "recall":
                result = Selection(keep=())
        ms = (time.perf_counter() - start) * 1000
        stats = dict(result.stats)
        if error:
            stats["fallback_reason"] = error
        if degraded:
            stats["model_signals"] = "off: past max_policy_ms, torch-free proxies from now on"
        return result, ms, fallback, stats

    def system_cost(self, state: MemoryState, summary: Segment | None) -> int:
        text = self.builder.system_text(self.system_prompt, state.pinned, summary)
        return self.counter.message(text) if text is not None else 0

    def _archive(
        self, archive: Sequence[Segment], add: Sequence[Segment]
    ) -> tuple[tuple[Segment, ...], int]:
        merged = list(archive)  # sorted by id; what is added is small
        for segment in add:
            bisect.insort(merged, segment, key=_segment_id)
        if self.archive_limit is None or len(merged) <= self.archive_limit:
            return tuple(merged), 0
        excess = len(merged) - self.archive_limit
        drop = {s.id for s in sorted(merged, key=lambda s: (archive_value(s), s.id))[:excess]}
        return tuple(s for s in merged if s.id not in drop), excess

    def plan(self, state: MemoryState, new: Sequence[Segment], query: str) -> Plan:
        """Plan a turn whose new user message is `new` (already segmented)."""
        new_text = " ".join(s.text for s in new)
        new_cost = self.counter.message(self.builder.user_text((), new_text))
        fixed = self.counter.base + self.system_cost(state, state.summary)
        available = self.max_tokens - self.max_new_tokens - fixed - new_cost
        if available < 0:
            room = self.max_tokens - self.max_new_tokens - fixed - self.counter.message_overhead
            raise MessageTooLongError(
                f"The message needs {new_cost - self.counter.message_overhead} tokens but at most "
                f"{max(room, 0)} fit (max_tokens={self.max_tokens}, max_new_tokens="
                f"{self.max_new_tokens}, system prompt and pins included). Shorten the message "
                "or raise max_tokens. Nothing was changed.",
                tokens=new_cost,
                available=max(room, 0),
            )
        share = self.recall_share(state, query, available)
        recall_reserve = int(available * share)
        high_water = available - recall_reserve
        history, archive, summary = state.history, state.archive, state.summary
        policy_ms, fallback, evicted_tokens, evicted = 0.0, False, 0, False
        stats: dict[str, Any] = {}
        dropped = 0
        if sum(s.tokens for s in history) > high_water:
            old_summary = summary.tokens if summary else 0
            budget = max(0, int(self.low_water * (high_water + old_summary)) - old_summary)
            request = PolicyRequest(
                "evict",
                history,
                budget,
                query,
                self.signals,
                summary,
                state.pinned,
                self.counter.text,
                state.turn,
                self.index,
            )
            selection, ms, fb, stats = self._select(request)
            policy_ms += ms
            fallback |= fb
            keep = set(selection.keep)
            if selection.summary is not None and not fb:
                text = selection.summary.strip()
                summary = (
                    Segment(-1, -1, "system", text, self.counter.text(text), "summary", state.turn)
                    if text
                    else None
                )
            kept = [s for s in history if s.id in keep]
            # Enforce the high-water mark even if a policy kept too much.
            while kept and sum(s.tokens for s in kept) > high_water:
                kept.pop(0)
            gone = [s for s in history if s.id not in {k.id for k in kept}]
            evicted_tokens = sum(s.tokens for s in gone)
            evicted = bool(gone)
            history = tuple(kept)
            archive, dropped = self._archive(archive, gone)
        recalled: tuple[Segment, ...] = ()
        if share >= DISTANT_SHARE:
            recall_reserve = max(recall_reserve, available - sum(s.tokens for s in history))
        if self.policy.recalls and archive and recall_reserve > 0:
            header = self.counter.text(
                self.builder.recall_header + "\n" + self.builder.recall_footer
            )
            request = PolicyRequest(
                "recall",
                archive,
                max(0, recall_reserve - header - 2),
                query,
                self.signals,
                summary,
                state.pinned + history,
                self.counter.text,
                state.turn,
                self.index,
            )
            selection, ms, fb, rstats = self._select(request)
            policy_ms += ms
            fallback |= fb
            keep = set(selection.keep)
            recalled = tuple(s for s in archive if s.id in keep)
            stats = {**stats, **{f"recall_{k}": v for k, v in rstats.items()}}
        if self.policy.recalls:
            stats["recall_share"] = round(share, 3)
        # The exact check: the backend's own count is the authority.
        history_list, recalled_list = list(history), list(recalled)
        while True:
            messages = self.builder.render(
                self.system_prompt, state.pinned, summary, history_list, recalled_list, new_text
            )
            prompt_tokens = self.counter.prompt(messages)
            if prompt_tokens + self.max_new_tokens <= self.max_tokens:
                break
            if recalled_list:
                recalled_list.pop(0)
            elif history_list:
                gone_one = history_list.pop(0)
                evicted_tokens += gone_one.tokens
                evicted = True
                archive, more = self._archive(archive, [gone_one])
                dropped += more
            else:
                raise MessageTooLongError(
                    f"The prompt needs {prompt_tokens} tokens plus max_new_tokens="
                    f"{self.max_new_tokens}, over max_tokens={self.max_tokens}, with all "
                    "history evicted. Shorten the message or raise max_tokens. "
                    "Nothing was changed.",
                    tokens=prompt_tokens,
                    available=self.max_tokens - self.max_new_tokens,
                )
        new_state = replace(
            state,
            summary=summary,
            history=tuple(history_list),
            archive=archive,
            archive_dropped=state.archive_dropped + dropped,
        )
        return Plan(
            messages=messages,
            prompt_tokens=prompt_tokens,
            state=new_state,
            recalled=tuple(recalled_list),
            evicted_tokens=evicted_tokens,
            evicted=evicted,
            policy="sliding" if fallback else self.policy.name,
            policy_ms=policy_ms,
            fallback=fallback,
            policy_stats=stats,
        )
