"""Segments: the units a memory policy keeps or drops."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Segment", "SegmentKind", "find_by_id"]

SegmentKind = Literal["message", "part", "pinned", "summary"]


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of the conversation with its exact token cost.

    A short message is one segment of kind `"message"`. A long one is split at sentence
    boundaries into several segments of kind `"part"` that share a `message_id`. Pinned items
    (the system prompt, facts the user pins) have kind `"pinned"` and are never dropped; a
    rolling summary has kind `"summary"`.

    Attributes:
        id: Unique, increasing in conversation order.
        message_id: The message this segment comes from (equal for all parts of one message).
        role: `"system"`, `"user"` or `"assistant"`.
        text: The text of the segment.
        tokens: Its token cost in the prompt under the active backend: the tokens of its
            text plus, for a whole message or the first part of one, the chat template's
            per-message overhead (for later parts, the separator). Sums of `tokens` are what
            policies budget with; the engine checks the final prompt exactly.
        kind: See above.
        turn: The turn in which the message was added (0-based).
        part: Index of this part within its message (0 for whole messages).
        parts: Number of parts of the message (1 for whole messages).
        name: The speaker's name, from [`Message.name`][fmai_core.messages.Message].
        timestamp: When the message was written, from
            [`Message.timestamp`][fmai_core.messages.Message].
        sep: The exact text (whitespace) between the previous part of the message and this
            one, so that joining the parts gives the message back verbatim, line breaks
            included.
    """

    id: int
    message_id: int
    role: str
    text: str
    tokens: int
    kind: SegmentKind = "message"
    turn: int = 0
    part: int = 0
    parts: int = 1
    name: str | None = None
    timestamp: str | None = None
    sep: str = " "

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping (metadata keys only when set)."""
        out: dict[str, Any] = {
            "id": self.id,
            "message_id": self.message_id,
            "role": self.role,
            "text": self.text,
            "tokens": self.tokens,
            "kind": self.kind,
            "turn": self.turn,
            "part": self.part,
            "parts": self.parts,
        }
        if self.name is not None:
            out["name"] = self.name
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        if self.sep != " ":
            out["sep"] = self.sep
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        """Inverse of [`to_dict`][fmai_core.segments.Segment.to_dict]."""
        return cls(
            id=int(data["id"]),
            message_id=int(data["message_id"]),
            role=str(data["role"]),
            text=str(data["text"]),
            tokens=int(data["tokens"]),
            kind=data.get("kind", "message"),
            turn=int(data.get("turn", 0)),
            part=int(data.get("part", 0)),
            parts=int(data.get("parts", 1)),
            name=data.get("name"),
            timestamp=data.get("timestamp"),
            sep=str(data.get("sep", " ")),
        )


def _segment_id(segment: Segment) -> int:
    return segment.id


def find_by_id(segments: Sequence[Segment], ids: Iterable[int]) -> list[Segment]:
    """The segments with `ids`, in the order of `ids` (ids not there are skipped).

    `segments` must be in conversation order (ids increasing), as the history, the archive
    and a policy's candidates are: each id is found by bisection, so the cost is that of
    `ids`, not of an archive of thousands.
    """
    out: list[Segment] = []
    n = len(segments)
    for i in ids:
        at = bisect.bisect_left(segments, i, key=_segment_id)
        if at < n and segments[at].id == i:
            out.append(segments[at])
    return out
