"""`sliding`: the newest segments that fit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from fmai_core.policies.base import Policy, PolicyRequest, Selection
from fmai_core.segments import Segment

__all__ = ["SlidingWindowPolicy"]


@dataclass(frozen=True)
class SlidingWindowPolicy(Policy):
    """Keep the newest segments whose tokens fit the budget; recall nothing.

    The cheapest policy and the fallback when another policy runs past `max_policy_ms`.
    """

    name: ClassVar[str] = "sliding"
    recalls: ClassVar[bool] = False

    def prepare(self, segments: Sequence[Segment]) -> None:
        """Nothing to precompute: `sliding` only reads token counts."""

    def select(self, request: PolicyRequest) -> Selection:
        """Walk back from the newest segment, keeping segments until the budget is spent."""
        budget = request.budget
        keep: list[int] = []
        for segment in reversed(request.candidates):
            if segment.tokens > budget:
                break
            budget -= segment.tokens
            keep.append(segment.id)
        return Selection(keep=tuple(keep), stats={"signal": "none"})
