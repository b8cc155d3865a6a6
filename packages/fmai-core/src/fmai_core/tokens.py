"""Exact token accounting through the backend."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from fmai_core.backend import Backend, TextCounter
from fmai_core.messages import Message

__all__ = ["TokenCounter"]


class TokenCounter:
    """Counts tokens under a backend, with the chat template's overheads measured once.

    Bare text is counted with the backend's `count_text` when it has one, otherwise as the
    difference of two `count_tokens` calls. Results are cached (LRU), since the same
    segments are counted many times.

    A backend whose counts change over time (a hosted backend correcting its estimate from
    reported usage) says so with a `count_revision` attribute: when it changes, the cache is
    dropped and the overheads are measured again, so every count made from then on (segment
    sizes, overheads, the final check) is under the same correction.

    Args:
        backend: The backend whose tokenizer counts.
        cache_size: Most texts whose counts are remembered.
    """

    def __init__(self, backend: Backend, cache_size: int = 4096) -> None:
        self.backend = backend
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size
        self._direct = isinstance(backend, TextCounter)
        self._revision = _revision(backend)
        self._measure()
        #: Tokens that join two parts of one message (a space is usually merged: 0 or 1).
        self.separator = 1

    def _measure(self) -> None:
        backend = self.backend
        self._empty_user = 0 if self._direct else backend.count_tokens([Message("user", "")])
        one = backend.count_tokens([Message("user", "a")])
        two = backend.count_tokens([Message("user", "a"), Message("assistant", "b")])
        self._message_overhead = max(0, two - one - self.text("b"))
        self._base = max(0, one - self.text("a") - self._message_overhead)

    def _current(self) -> None:
        """Re-measure if the backend's counting changed since the last measurement."""
        revision = _revision(self.backend)
        if revision != self._revision:
            self._revision = revision
            self._cache.clear()
            self._measure()

    @property
    def message_overhead(self) -> int:
        """Template tokens around one message (role markers, end-of-turn)."""
        self._current()
        return self._message_overhead

    @property
    def base(self) -> int:
        """Template tokens of a prompt beyond its messages (e.g. the reply opener)."""
        self._current()
        return self._base

    def text(self, text: str) -> int:
        """Tokens of `text` on its own."""
        self._current()
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        if self._direct:
            n = int(self.backend.count_text(text))  # type: ignore[attr-defined]
        else:
            n = max(0, self.backend.count_tokens([Message("user", text)]) - self._empty_user)
        self._cache[text] = n
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return n

    def message(self, text: str) -> int:
        """Prompt cost of a message with this text: its tokens plus the per-message overhead."""
        return self.text(text) + self.message_overhead

    def prompt(self, messages: Sequence[Message]) -> int:
        """Exact prompt length of `messages` (the backend's own count)."""
        return int(self.backend.count_tokens(messages))


def _revision(backend: Backend) -> object:
    """The backend's `count_revision` (None for a backend whose counts never change)."""
    return getattr(backend, "count_revision", None)
