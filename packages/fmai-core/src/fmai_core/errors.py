"""Errors raised by fmai.

Every fmai error derives from [`FMAIError`][fmai_core.errors.FMAIError], and every message
says what to do next. Catch the base class to handle any fmai failure, or a subclass to
handle one kind.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BackendError",
    "BackendTimeoutError",
    "BudgetError",
    "CheckpointError",
    "CheckpointWriteError",
    "ConfigurationError",
    "EmptyMessageError",
    "FMAIError",
    "InvalidMessageError",
    "MessageTooLongError",
    "MissingDependencyError",
    "RateLimitError",
    "RequestRejectedError",
    "UnknownPolicyError",
]


class FMAIError(Exception):
    """Base class of every error fmai raises."""


class ConfigurationError(FMAIError, ValueError):
    """A constructor argument or setting is invalid."""


class UnknownPolicyError(ConfigurationError):
    """A memory policy name is not registered."""


class BudgetError(ConfigurationError):
    """The token budget cannot hold what must always be in the prompt.

    Raised when `max_tokens` minus `max_new_tokens` is too small for the pinned system
    prompt and pinned facts.
    """


class InvalidMessageError(FMAIError, ValueError):
    """A message is malformed (unknown role, not a string)."""


class EmptyMessageError(InvalidMessageError):
    """A user message is empty or only whitespace."""


class MessageTooLongError(FMAIError, ValueError):
    """A single message cannot fit in the prompt even with all history evicted.

    A message longer than
    [`MAX_CHARS_PER_TOKEN`][fmai_core.engine.FiniteMemoryLLM.MAX_CHARS_PER_TOKEN] (64)
    characters per token of room (`max_tokens - max_new_tokens`) is refused at once, before
    it is counted or split (a 10 MB message takes microseconds, not seconds under the
    conversation's lock); `tokens` is then a lower bound.

    Attributes:
        tokens: The tokens the message needs.
        available: The tokens left for it under the budget.
    """

    def __init__(self, message: str, *, tokens: int = 0, available: int = 0) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.available = available


class CheckpointError(FMAIError):
    """A checkpoint is missing, corrupt, of an unknown version, or from another tokenizer.

    Loading raises it for a file that fails its checksum or the schema check, that is nested
    too deeply to parse, or that was counted under another tokenizer; nothing is loaded.
    See [`fmai_core.checkpoint`][fmai_core.checkpoint].
    """


class CheckpointWriteError(CheckpointError, OSError):
    """`save()` could not write the checkpoint (a read-only folder, a path under a file, a
    full disk); the message says what to do, and a previous checkpoint there is unchanged.

    It is also an `OSError`, so code that caught the raw `OSError` before keeps working.
    """


class MissingDependencyError(FMAIError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class BackendError(FMAIError):
    """The model backend failed (network, server, or model error).

    Also raised when a backend's stream ends without its final chunk (a `StreamChunk` with
    `.generation`): the reply may be incomplete, so the turn is not stored.
    """


class BackendTimeoutError(BackendError, TimeoutError):
    """The backend did not answer in time."""


class RateLimitError(BackendError):
    """The provider refused the request for rate limits, and retries were exhausted."""


class AuthenticationError(BackendError):
    """The provider rejected the API key."""


class RequestRejectedError(BackendError):
    """The provider refused the request itself (HTTP 400, 404, 413 or 422: a parameter it does
    not take, an unknown model, a body too large); sending it again would not help, so it is
    not retried."""


def missing_dependency(
    module: str, extra: str, package: str = "fmai-core"
) -> MissingDependencyError:
    """Build the error for an optional module that is not installed.

    Args:
        module: The module that failed to import.
        extra: The extra that installs it.
        package: The distribution that declares the extra.
    """
    return MissingDependencyError(
        f"{module!r} is not installed. Install it with: pip install '{package}[{extra}]'"
    )
