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

    Examples:
        >>> Message("user", "Hello!")
        Message(role='user', content='Hello!')
    """

    role: Role
    content: str

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

    def to_dict(self) -> dict[str, str]:
        """Return the OpenAI-style `{"role": ..., "content": ...}` mapping."""
        return {"role": self.role, "content": self.content}

    @classmethod
    def from_dict(cls, data: Any) -> Message:
        """Build a message from a `{"role": ..., "content": ...}` mapping."""
        if not isinstance(data, dict) or "role" not in data or "content" not in data:
            raise InvalidMessageError(
                f"A message mapping needs the keys 'role' and 'content', got {data!r}."
            )
        return cls(data["role"], data["content"])
