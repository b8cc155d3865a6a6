"""The conversation record: pinned items, summary, history in the prompt, and the archive.

[`MemoryState`][fmai_core.memory.MemoryState] is immutable: a turn computes a new state and
the engine swaps it in only when the turn succeeds, so a failure never leaves memory half
changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fmai_core.segments import Segment
from fmai_core.text import words
from fmai_core.tokens import TokenCounter

__all__ = ["MemoryState", "archive_value", "recount", "segment_message"]

_NONSPACE = re.compile(r"\S+")


@dataclass(frozen=True)
class MemoryState:
    """Everything the engine remembers about one conversation.

    Attributes:
        pinned: Pinned facts (never dropped; the system prompt is kept by the engine).
        summary: The rolling summary of evicted history, if any.
        history: Segments in the prompt's append-only history, in conversation order.
        archive: Segments evicted from the prompt, in conversation order, recallable.
        turn: Turns completed.
        next_segment_id: Id for the next segment.
        next_message_id: Id for the next message.
        archive_dropped: Segments dropped because the archive was full.
        shown: With `recall_layout="stable"`: `(user message id, recalled segment ids)`
            for each history message whose recalled block stays in the prompt.
    """

    pinned: tuple[Segment, ...] = ()
    summary: Segment | None = None
    history: tuple[Segment, ...] = ()
    archive: tuple[Segment, ...] = ()
    turn: int = 0
    next_segment_id: int = 0
    next_message_id: int = 0
    archive_dropped: int = 0
    shown: tuple[tuple[int, tuple[int, ...]], ...] = ()

    @property
    def history_tokens(self) -> int:
        """Token cost of the history."""
        return sum(s.tokens for s in self.history)

    def append(self, segments: Sequence[Segment]) -> MemoryState:
        """Return a state with `segments` appended to the history."""
        if not segments:
            return self
        return replace(
            self,
            history=self.history + tuple(segments),
            next_segment_id=max(self.next_segment_id, segments[-1].id + 1),
            next_message_id=max(self.next_message_id, segments[-1].message_id + 1),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping (`shown` only when some block is shown, so a
        `recall_layout="fresh"` checkpoint is what it was before that setting)."""
        out: dict[str, Any] = {
            "pinned": [s.to_dict() for s in self.pinned],
            "summary": self.summary.to_dict() if self.summary else None,
            "history": [s.to_dict() for s in self.history],
            "archive": [s.to_dict() for s in self.archive],
            "turn": self.turn,
            "next_segment_id": self.next_segment_id,
            "next_message_id": self.next_message_id,
            "archive_dropped": self.archive_dropped,
        }
        if self.shown:
            out["shown"] = [[mid, list(ids)] for mid, ids in self.shown]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryState:
        """Inverse of [`to_dict`][fmai_core.memory.MemoryState.to_dict]."""
        summary = data.get("summary")
        return cls(
            pinned=tuple(Segment.from_dict(s) for s in data["pinned"]),
            summary=Segment.from_dict(summary) if summary else None,
            history=tuple(Segment.from_dict(s) for s in data["history"]),
            archive=tuple(Segment.from_dict(s) for s in data["archive"]),
            turn=int(data["turn"]),
            next_segment_id=int(data["next_segment_id"]),
            next_message_id=int(data["next_message_id"]),
            archive_dropped=int(data.get("archive_dropped", 0)),
            shown=tuple(
                (int(mid), tuple(int(i) for i in ids)) for mid, ids in data.get("shown", ())
            ),
        )


def _spans(text: str, parts: Sequence[str]) -> list[tuple[int, int]] | None:
    """Where each part lies in `text`, or `None` if the parts don't align with it.

    Parts are made of the message's whitespace-separated words, in order; each part's span
    runs from its first word to its last in `text`.
    """
    words_ = [(m.start(), m.end()) for m in _NONSPACE.finditer(text)]
    out: list[tuple[int, int]] = []
    at = 0
    for part in parts:
        n = len(part.split())
        if n == 0 or at + n > len(words_):
            return None
        start, end = words_[at][0], words_[at + n - 1][1]
        if text[start:end].split() != part.split():
            return None
        out.append((start, end))
        at += n
    return out if at == len(words_) else None


def _word_spans(text: str, counts: Sequence[int]) -> list[tuple[int, int]]:
    """Spans of consecutive runs of `counts` whitespace-separated words of `text` (the
    last run takes any words left over)."""
    words_ = [(m.start(), m.end()) for m in _NONSPACE.finditer(text)]
    out: list[tuple[int, int]] = []
    at = 0
    for i, n in enumerate(counts):
        if at >= len(words_):
            break
        last = len(words_) - 1 if i == len(counts) - 1 else min(at + max(n, 1), len(words_)) - 1
        out.append((words_[at][0], words_[last][1]))
        at = last + 1
    if at < len(words_) and out:
        out[-1] = (out[-1][0], words_[-1][1])
    return out or [(0, len(text))]


def segment_message(
    role: str,
    text: str,
    *,
    counter: TokenCounter,
    splitter: Callable[[str], list[str]],
    max_tokens: int,
    first_id: int,
    message_id: int,
    turn: int,
    name: str | None = None,
    timestamp: str | None = None,
) -> list[Segment]:
    """Cut a message into segments at sentence boundaries.

    A message of at most `max_tokens` tokens is one segment. A longer one is split into
    sentences (the anchors), and consecutive sentences are grouped into parts of at most
    `max_tokens` tokens; a single sentence longer than that is cut between words. Each part
    is its exact span of the message and keeps the exact whitespace that preceded it
    (`Segment.sep`); the first part keeps the message's leading whitespace and the last its
    trailing whitespace, so the parts rejoin into the message verbatim, byte for byte.
    Splitting is for selection only: the prompt shows the message as written.
    """
    if counter.text(text) <= max_tokens:
        cost = counter.message(text)
        return [
            Segment(first_id, message_id, role, text, cost, "message", turn, 0, 1, name, timestamp)
        ]
    pieces: list[str] = []
    for sentence in splitter(text) or [text]:
        if counter.text(sentence) <= max_tokens:
            pieces.append(sentence)
            continue
        chunk: list[str] = []
        for word in sentence.split():
            if chunk and counter.text(" ".join([*chunk, word])) > max_tokens:
                pieces.append(" ".join(chunk))
                chunk = []
            chunk.append(word)
        if chunk:
            pieces.append(" ".join(chunk))
    parts: list[str] = []
    for piece in pieces:
        if parts and counter.text(parts[-1] + " " + piece) <= max_tokens:
            parts[-1] = parts[-1] + " " + piece
        else:
            parts.append(piece)
    spans = _spans(text, parts)
    if spans is None:  # a splitter that changed the words: cut at the same word counts
        spans = _word_spans(text, [len(p.split()) for p in parts])
    # each part is its exact span of the message; the message's own leading and trailing
    # whitespace stays with its first and last part, so the parts rejoin verbatim
    spans[0] = (0, spans[0][1])
    spans[-1] = (spans[-1][0], len(text))
    parts = [text[a:b] for a, b in spans]
    seps = [" ", *(text[spans[i - 1][1] : spans[i][0]] for i in range(1, len(spans)))]
    segments = []
    costs = part_costs(counter, text, parts)
    for i, part in enumerate(parts):
        cost = costs[i]
        sep = seps[i]
        segments.append(
            Segment(
                first_id + i,
                message_id,
                role,
                part,
                cost,
                "part",
                turn,
                i,
                len(parts),
                name,
                timestamp,
                sep,
            )
        )
    return segments


def part_costs(counter: TokenCounter, text: str, parts: Sequence[str]) -> list[int]:
    """The costs of a message's parts: its whole cost, shared out by the parts' sizes.

    The parts of a message cost together exactly what the message costs (its text plus the
    per-message overhead, which the first part carries), shared in proportion to each
    part's own count (largest remainders), so that a planner adding up the parts of a
    message gets the count of the message, whatever the tokenizer merges across the cuts
    and however a hosted count knows the whole message (the provider's own count) better
    than its parts.
    """
    body = counter.text(text)
    sizes = [counter.text(p) for p in parts]
    weight = sum(sizes)
    if weight <= 0:
        shares = [body // len(parts)] * len(parts)
        shares[0] += body - sum(shares)
    else:
        exact = [body * n / weight for n in sizes]
        shares = [int(x) for x in exact]
        left = body - sum(shares)
        for i in sorted(range(len(parts)), key=lambda i: shares[i] - exact[i])[:left]:
            shares[i] += 1
    shares[0] += counter.message_overhead
    return shares


def segment_costs(segments: Sequence[Segment], counter: TokenCounter) -> list[int]:
    """The cost of each of `segments` under `counter`'s current count.

    As [`segment_message`][fmai_core.memory.segment_message] gives them: a whole message,
    its text plus the per-message overhead; the parts of a message, its cost shared out by
    [`part_costs`][fmai_core.memory.part_costs] when all its parts are among `segments`
    (else a first part its text plus the overhead, a later part its text plus the
    separator); a pinned fact or a summary, its text.
    """
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(segments):
        if s.kind == "part":
            groups.setdefault(s.message_id, []).append(i)
    costs: dict[int, int] = {}
    for idx in groups.values():
        parts = sorted(idx, key=lambda i: segments[i].part)
        whole = [segments[i].part for i in parts] == list(range(segments[parts[0]].parts))
        if whole:
            text = segments[parts[0]].text + "".join(
                segments[i].sep + segments[i].text for i in parts[1:]
            )
            for i, c in zip(parts, part_costs(counter, text, [segments[i].text for i in parts])):
                costs[i] = c
        else:
            for i in parts:
                s = segments[i]
                extra = counter.message_overhead if s.part == 0 else counter.separator
                costs[i] = counter.text(s.text) + extra
    out = []
    for i, s in enumerate(segments):
        if i in costs:
            out.append(costs[i])
        elif s.kind in ("message", "part"):
            out.append(counter.message(s.text))
        else:
            out.append(counter.text(s.text))
    return out


def recount(segments: Sequence[Segment], counter: TokenCounter) -> tuple[Segment, ...]:
    """`segments` with their `tokens` counted again under `counter`'s current count (see
    [`segment_costs`][fmai_core.memory.segment_costs]), so that segment sizes agree with
    the final count after a hosted backend's correction changed."""
    costs = segment_costs(segments, counter)
    return tuple(s if c == s.tokens else replace(s, tokens=c) for s, c in zip(segments, costs))


def archive_value(segment: Segment) -> float:
    """A cheap information score used to decide what a full archive drops first.

    Counts distinct words, with extra weight for numbers and capitalised words (names,
    places), which are what people ask about later. Ties go to the older segment.
    """
    ws = set(words(segment.text))
    digits = sum(1 for w in ws if any(c.isdigit() for c in w))
    capitals = sum(1 for w in segment.text.split()[1:] if w[:1].isupper())
    return len(ws) + 2.0 * digits + 1.5 * capitals
