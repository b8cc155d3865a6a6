"""`TurnTrace`: what one turn's prompt held, part by part, and what memory decided.

A chat result carries the trace of its turn ([`ChatResult.trace`][fmai_core.engine.ChatResult],
`FiniteMemoryLLM.last_trace` after a stream), and
[`FiniteMemoryLLM.trace`][fmai_core.engine.FiniteMemoryLLM.trace] gives the trace the next
turn would have for a message, with no side effect (the planning of
[`context`][fmai_core.engine.FiniteMemoryLLM.context]). The prompt is laid out in the
[`ContextBuilder`][fmai_core.context.ContextBuilder]'s parts:

```
[system: system prompt, pinned facts, summary] [history] [recalled + new message]
```

Example:
    ```python
    from fmai_core import FiniteMemoryLLM
    from fmai_core.testing import EchoBackend

    llm = FiniteMemoryLLM(EchoBackend(), policy="sliding", max_tokens=256, max_new_tokens=32)
    r = llm.chat("Hello!")
    print(r.trace.part_tokens, r.trace.prompt_tokens)
    ```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fmai_core.messages import Message
from fmai_core.segments import Segment
from fmai_core.stats import TurnStats

if TYPE_CHECKING:
    from fmai_core.planner import Plan, Planner

__all__ = ["PART_NAMES", "TurnTrace", "build_trace"]

#: The prompt's parts, in prompt order.
PART_NAMES = ("system_prompt", "pinned", "summary", "history", "recalled", "new")


@dataclass(frozen=True)
class TurnTrace:
    """The prompt of one turn in its parts, with the memory's decisions of that turn.

    Token counts of the parts are the segments' own counts (each holds its text plus the
    chat template's per-message overhead, see [`Segment.tokens`][fmai_core.segments.Segment]);
    `prompt_tokens` is the backend's count of the whole rendered prompt, and
    `overhead_tokens` the difference (the template around the system message and the
    recalled block's lead-in).

    Attributes:
        turn: Turn number (0-based).
        messages: The exact prompt sent to the model, as rendered.
        prompt_tokens: The planner's exact count of `messages` (the backend's count).
        system_prompt: The pinned system prompt (`None`: none).
        system_prompt_tokens: Its tokens.
        pinned: Pinned facts in the system message.
        summary: The rolling summary in the system message (`None`: none).
        history: History segments in the prompt, in conversation order.
        recalled: Archived segments recalled into the final user message, in conversation
            order.
        recall_scores: Relevance score of each recalled segment, by segment id, as the
            policy's recall reported it (empty when the policy reports no scores).
        new_message: The new user message.
        new_tokens: Its tokens (as the final user message, with no recalled block).
        evicted: Segments moved from the history to the archive at this turn.
        archive_dropped: Archived segments dropped this turn by a full archive
            (`archive_limit`).
        archive_segments: Segments in the archive once the turn is planned.
        archive_tokens: Their tokens.
        policy: The policy that decided (`"sliding"` after a fallback).
        policy_stats: The policy's figures (as in `TurnStats.policy_stats`).
        stats: The turn's [`TurnStats`][fmai_core.stats.TurnStats] once it ran; `None` in a
            trace of [`FiniteMemoryLLM.trace`][fmai_core.engine.FiniteMemoryLLM.trace].
    """

    turn: int
    messages: tuple[Message, ...]
    prompt_tokens: int
    system_prompt: str | None
    system_prompt_tokens: int
    pinned: tuple[Segment, ...]
    summary: Segment | None
    history: tuple[Segment, ...]
    recalled: tuple[Segment, ...]
    recall_scores: Mapping[int, float]
    new_message: str
    new_tokens: int
    evicted: tuple[Segment, ...] = ()
    archive_dropped: int = 0
    archive_segments: int = 0
    archive_tokens: int = 0
    policy: str = ""
    policy_stats: dict[str, Any] = field(default_factory=dict)
    stats: TurnStats | None = None

    @property
    def part_tokens(self) -> dict[str, int]:
        """Tokens of each part, by name (see `PART_NAMES`)."""
        return {
            "system_prompt": self.system_prompt_tokens,
            "pinned": sum(s.tokens for s in self.pinned),
            "summary": self.summary.tokens if self.summary is not None else 0,
            "history": sum(s.tokens for s in self.history),
            "recalled": sum(s.tokens for s in self.recalled),
            "new": self.new_tokens,
        }

    @property
    def overhead_tokens(self) -> int:
        """`prompt_tokens` less the parts' sum: the template's tokens around them."""
        return self.prompt_tokens - sum(self.part_tokens.values())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping (segments as `Segment.to_dict`, scores by id)."""
        return {
            "turn": self.turn,
            "messages": [m.to_dict() for m in self.messages],
            "prompt_tokens": self.prompt_tokens,
            "part_tokens": self.part_tokens,
            "overhead_tokens": self.overhead_tokens,
            "system_prompt": self.system_prompt,
            "system_prompt_tokens": self.system_prompt_tokens,
            "pinned": [s.to_dict() for s in self.pinned],
            "summary": self.summary.to_dict() if self.summary is not None else None,
            "history": [s.to_dict() for s in self.history],
            "recalled": [
                {**s.to_dict(), "score": self.recall_scores.get(s.id)} for s in self.recalled
            ],
            "new_message": self.new_message,
            "new_tokens": self.new_tokens,
            "evicted": [s.to_dict() for s in self.evicted],
            "archive_dropped": self.archive_dropped,
            "archive_segments": self.archive_segments,
            "archive_tokens": self.archive_tokens,
            "policy": self.policy,
            "policy_stats": dict(self.policy_stats),
            "stats": self.stats.to_dict() if self.stats is not None else None,
        }

    def with_stats(self, stats: TurnStats) -> TurnTrace:
        """This trace with the turn's figures (and their policy stats) attached."""
        return replace(self, stats=stats, policy_stats=dict(stats.policy_stats))


def build_trace(planner: Planner, plan: Plan, new: Sequence[Segment]) -> TurnTrace:
    """The trace of `plan`, a plan `planner` made for the new message `new` (its segments)."""
    new_text = new[0].text + "".join(s.sep + s.text for s in new[1:]) if new else ""
    state = plan.state
    system = planner.config.system_prompt
    builder, counter = planner.builder, planner.counter
    return TurnTrace(
        turn=state.turn,
        messages=tuple(plan.messages),
        prompt_tokens=plan.prompt_tokens,
        system_prompt=system,
        system_prompt_tokens=counter.text(system) if system else 0,
        pinned=state.pinned,
        summary=state.summary,
        history=state.history,
        recalled=plan.recalled,
        recall_scores=dict(plan.recall_scores),
        new_message=new_text,
        new_tokens=counter.message(builder.user_text((), new_text)),
        evicted=plan.evicted_segments,
        archive_dropped=plan.dropped,
        archive_segments=len(state.archive),
        archive_tokens=plan.archive_tokens,
        policy=plan.policy,
        policy_stats=dict(plan.policy_stats),
    )
