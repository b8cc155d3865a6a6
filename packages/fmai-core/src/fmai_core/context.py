"""The context builder: lays out the prompt so caches stay valid.

```
[system: system prompt, pinned facts, summary] [history, append-only] [recalled + new message]
```

The system message changes only when a pin or an eviction changes it; the history only
grows between evictions; query-dependent recalled segments go into the final user message,
never into the cached prefix. So a local KV cache or a hosted prompt cache can reuse
everything up to the last turn's reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fmai_core.messages import Message
from fmai_core.segments import Segment

__all__ = ["ContextBuilder"]


def _messages(segments: Sequence[Segment]) -> list[tuple[Segment, str]]:
    """Join consecutive segments of one message; return (first segment, text) per message.

    Parts are joined with the whitespace that separated them in the message
    (`Segment.sep`), so a whole message comes back verbatim.
    """
    out: list[tuple[Segment, str]] = []
    last_id: int | None = None
    for s in segments:
        if s.message_id == last_id:
            head, text = out[-1]
            out[-1] = (head, text + s.sep + s.text)
        else:
            out.append((s, s.text))
        last_id = s.message_id
    return out


def _label(segment: Segment) -> str:
    """How a recalled message is introduced: its date and speaker when known, else its role."""
    who = segment.name or segment.role
    return f"[{segment.timestamp}] {who}" if segment.timestamp else who


@dataclass(frozen=True)
class ContextBuilder:
    """Renders memory into chat messages.

    Attributes:
        pinned_header: Heading before pinned facts in the system message.
        summary_header: Heading before the rolling summary in the system message.
        recall_header: Opening line of the recalled block in the final user message: a
            plain-language lead-in. (Bracketed markers such as "[End of recalled context]"
            were copied by the embedded SmolLM2-135M as its whole reply; see
            docs/hosted.md for the measurement.)
        recall_footer: Closing line of the recalled block; empty (the default): no closing
            line, a blank line separates the block from the new message.
    """

    pinned_header: str = "Facts to remember:"
    summary_header: str = "Summary of the earlier conversation:"
    recall_header: str = "Earlier in this conversation:"
    recall_footer: str = ""

    def system_text(
        self, system_prompt: str | None, pinned: Sequence[Segment], summary: Segment | None
    ) -> str | None:
        """Return the system message's text, or `None` when there is nothing to say."""
        blocks: list[str] = []
        if system_prompt:
            blocks.append(system_prompt)
        if pinned:
            blocks.append("\n".join([self.pinned_header, *(f"- {p.text}" for p in pinned)]))
        if summary is not None and summary.text:
            blocks.append(f"{self.summary_header}\n{summary.text}")
        return "\n\n".join(blocks) if blocks else None

    def user_text(self, recalled: Sequence[Segment], new_text: str) -> str:
        """Return the final user message: recalled segments (if any), then the new text.

        Each recalled message is one line, `[timestamp] name: text` (the role stands in for
        a missing name; the date is left out when unknown), its text verbatim.
        """
        if not recalled:
            return new_text
        lines = [self.recall_header]
        lines += [f"{_label(head)}: {text}" for head, text in _messages(recalled)]
        if self.recall_footer:
            lines.append(self.recall_footer)
        return "\n".join(lines) + "\n\n" + new_text

    def render(
        self,
        system_prompt: str | None,
        pinned: Sequence[Segment],
        summary: Segment | None,
        history: Sequence[Segment],
        recalled: Sequence[Segment],
        new_text: str | None,
        shown: Mapping[int, Sequence[Segment]] | None = None,
    ) -> list[Message]:
        """Return the prompt as messages, in the cache-stable layout.

        Args:
            system_prompt: The pinned system prompt.
            pinned: Pinned facts.
            summary: The rolling summary.
            history: Kept history segments, in conversation order.
            recalled: Recalled archive segments, in conversation order.
            new_text: The new user message (`None` renders history only).
            shown: Recalled segments that stay with a history user message, by its
                message id (`recall_layout="stable"`): that message is rendered as it was
                sent, its recalled block first.
        """
        messages: list[Message] = []
        system = self.system_text(system_prompt, pinned, summary)
        if system is not None:
            messages.append(Message("system", system))
        for head, text in _messages(history):
            block = shown.get(head.message_id) if shown and head.role == "user" else None
            content = self.user_text(block, text) if block else text
            messages.append(Message(head.role, content))  # type: ignore[arg-type]
        if new_text is not None:
            messages.append(Message("user", self.user_text(recalled, new_text)))
        return messages
