"""Chat messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fmai_core.errors import InvalidMessageError

__all__ = ["ROLES", "Message", "Role"]

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message.

    Args:
        role: `"system"`, `"user"` or `"assistant"`.
        content: The text of the message.
        name: Who wrote it, when a conversation has named speakers (`"Caroline"`). fmai keeps
            it with the message and shows it when the message is recalled from the archive;
            it is not sent to the backend as a field.
        timestamp: When it was written, as free text (`"2023-05-08"`, `"8 May 2023, 1:56 pm"`):
            shown with the message when it is recalled, so a question about "when" can be
            answered from the archive.

    Examples:
        >>> Message("user", "Hello!")
        Message(role='user', content='Hello!')
    """

    role: Role
    content: str
    name: str | None = None
    timestamp: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidMessageError(
                f"Unknown message role {self.role!r}: use one of {', '.join(ROLES)}."
            )
        if not isinstance(self.content, str):
            raise InvalidMessageError(
                f"Message content must be str, got {type(self.content).__name__}: "
                "convert it to text first."
            )
        for label, value in (("name", self.name), ("timestamp", self.timestamp)):
            if value is not None and not isinstance(value, str):
                raise InvalidMessageError(
                    f"Message {label} must be a str or None, got {type(value).__name__}."
                )

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={v!r}" for k, v in (("name", self.name), ("timestamp", self.timestamp)) if v
        )
        return f"Message(role={self.role!r}, content={self.content!r}{extra})"

    def to_dict(self) -> dict[str, str]:
        """Return the OpenAI-style `{"role": ..., "content": ...}` mapping (no metadata)."""
        return {"role": self.role, "content": self.content}

    @classmethod
    def from_dict(cls, data: Any) -> Message:
        """Build a message from a `{"role": ..., "content": ...}` mapping."""
        if not isinstance(data, dict) or "role" not in data or "content" not in data:
            raise InvalidMessageError(
                f"A message mapping needs the keys 'role' and 'content', got {data!r}."
            )
        return cls(data["role"], data["content"], data.get("name"), data.get("timestamp"))
