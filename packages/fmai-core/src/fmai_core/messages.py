"""Chat messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fmai_core.errors import InvalidMessageError

__all__ = ["ROLES", "Message", "Role", "check_encodable", "encodable"]

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


def encodable(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (`text` itself when it has none):
    for text that fmai did not get from the user (a model's reply or summary), which must
    be storable, and whose writer cannot be asked to fix it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


def check_encodable(text: str, what: str = "Message content") -> None:
    """Refuse text that cannot be encoded as UTF-8 (it holds a lone surrogate).

    Such text can be neither sent to a hosted API nor written to a checkpoint. It usually
    comes from bytes decoded with `errors="surrogateescape"` (file names, `sys.argv`,
    `os.environ`).

    Raises:
        InvalidMessageError: `text` holds a lone surrogate; the message says how to fix it.

    Examples:
        >>> check_encodable("café")
        >>> check_encodable(b"caf\\xe9".decode("utf-8", "surrogateescape"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fmai_core.errors.InvalidMessageError: Message content holds a lone surrogate ...
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessageError(
            f"{what} holds a lone surrogate ({text[exc.start]!r} at index {exc.start}), which "
            "cannot be encoded as UTF-8: it could be neither sent nor saved. It usually comes "
            "from bytes decoded with errors='surrogateescape'; decode them with "
            "errors='replace' (or with their real encoding) before passing the text."
        ) from None


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
        check_encodable(self.content)
        for label, value in (("name", self.name), ("timestamp", self.timestamp)):
            if value is not None and not isinstance(value, str):
                raise InvalidMessageError(
                    f"Message {label} must be a str or None, got {type(value).__name__}."
                )
            if value is not None:
                check_encodable(value, f"Message {label}")

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
