"""Exact token accounting through the backend."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

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

    Safe to share between threads (a policy worker abandoned at its deadline may still be
    counting while the next turn runs): the overheads are an immutable snapshot replaced
    whole, the cache is only touched under a lock, and the backend counts outside it. A count
    made while the backend's revision changed is returned but not cached.

    Args:
        backend: The backend whose tokenizer counts.
        cache_size: Most texts whose counts are remembered.
    """

    def __init__(self, backend: Backend, cache_size: int = 4096) -> None:
        self.backend = backend
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = max(0, cache_size)
        self._direct = isinstance(backend, TextCounter)
        self._revised = _revision(backend) is not None  # else counts never change
        self._lock = threading.Lock()
        self._snap = self._measure()
        #: Tokens that join two parts of one message (a space is usually merged: 0 or 1).
        self.separator = 1

    # -- the overheads, as one snapshot per backend revision ---------------------------------
    def _count(self, text: str, empty_user: int) -> int:
        """Tokens of `text`, uncached."""
        if self._direct:
            return int(self.backend.count_text(text))  # type: ignore[attr-defined]
        return max(0, self.backend.count_tokens([Message("user", text)]) - empty_user)

    def _measure(self) -> _Snapshot:
        """Measure the overheads under one backend revision (retried if it changes)."""
        backend = self.backend
        for _ in range(4):
            revision = _revision(backend)
            empty = 0 if self._direct else backend.count_tokens([Message("user", "")])
            one = backend.count_tokens([Message("user", "a")])
            two = backend.count_tokens([Message("user", "a"), Message("assistant", "b")])
            overhead = max(0, two - one - self._count("b", empty))
            base = max(0, one - self._count("a", empty) - overhead)
            if _revision(backend) == revision:
                break
        return _Snapshot(revision, empty, overhead, base)

    def _current(self) -> _Snapshot:
        """The snapshot for the backend's current revision (re-measured if it changed)."""
        snap = self._snap
        if not self._revised or _revision(self.backend) == snap.revision:
            return snap
        with self._lock:  # one thread re-measures; the others then find its snapshot
            snap = self._snap
            if _revision(self.backend) != snap.revision:
                snap = self._measure()
                self._cache = OrderedDict()
                self._snap = snap
            return snap

    @property
    def message_overhead(self) -> int:
        """Template tokens around one message (role markers, end-of-turn)."""
        return self._current().message_overhead

    @property
    def base(self) -> int:
        """Template tokens of a prompt beyond its messages (e.g. the reply opener)."""
        return self._current().base

    # -- counting ---------------------------------------------------------------------------
    def text(self, text: str) -> int:
        """Tokens of `text` on its own."""
        snap = self._snap
        if self._revised and _revision(self.backend) != snap.revision:
            snap = self._current()
        with self._lock:
            hit = self._cache.get(text)  # the cache of `snap`'s revision, or of a newer one
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        n = self._count(text, snap.empty_user)  # outside the lock: it may be slow
        with self._lock:
            if self._snap is snap and _revision(self.backend) == snap.revision:
                self._cache[text] = n
                self._cache.move_to_end(text)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return n

    def message(self, text: str) -> int:
        """Prompt cost of a message with this text: its tokens plus the per-message overhead."""
        return self.text(text) + self.message_overhead

    def prompt(self, messages: Sequence[Message]) -> int:
        """Exact prompt length of `messages` (the backend's own count)."""
        return int(self.backend.count_tokens(messages))


class _Snapshot(NamedTuple):
    """What is measured once per backend revision (replaced whole, never mutated)."""

    revision: object
    empty_user: int
    message_overhead: int
    base: int


def _revision(backend: Backend) -> object:
    """The backend's `count_revision` (None for a backend whose counts never change)."""
    return getattr(backend, "count_revision", None)
