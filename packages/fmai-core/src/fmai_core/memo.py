"""One memo mechanism for the torch-free signals: bounded, registered, cleared together.

Per-text features (content terms, hashed embeddings, information cues, ...) are memoised so
that a text entering memory is processed once (see
[`Policy.prepare`][fmai_core.policies.Policy.prepare]). Each memo is an LRU cache with a
fixed number of entries, sized for what policies look at again: the history in the prompt
and the newest archived turns (recall itself reads the conversation's
[`RecallIndex`][fmai_core.retrieval.RecallIndex], not these caches). So memory stays
bounded however long a conversation runs, and however many run in one process.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

__all__ = ["PER_SET", "PER_TEXT", "EmbeddingCache", "clear_caches", "memo", "registered"]

F = TypeVar("F", bound=Callable[..., Any])

# Entries of a per-text memo: a few conversations' histories and their newest archive.
PER_TEXT = 8192
# Entries of a per-candidate-set memo (indexes, topics): the last few sets.
PER_SET = 8

_REGISTRY: list[Any] = []


def memo(maxsize: int = PER_TEXT) -> Callable[[F], F]:
    """`functools.lru_cache(maxsize)`, registered so that `clear_caches` empties it."""

    def wrap(fn: F) -> F:
        cached = lru_cache(maxsize=maxsize)(fn)
        _REGISTRY.append(cached)
        return cached  # type: ignore[return-value]

    return wrap


def registered() -> list[Any]:
    """The registered memos (each has `cache_info()` and `cache_clear()`)."""
    return list(_REGISTRY)


def clear_caches() -> None:
    """Empty every registered memo (to free memory or to measure cold-start cost)."""
    for cached in _REGISTRY:
        cached.cache_clear()


class EmbeddingCache:
    """Wraps an embed function so that each text is embedded once (an LRU by text).

    The engine embeds every message as it enters memory; the policies ask for the same
    texts again (an eviction ranks the history by relevance), and get them from here.
    Vectors are kept as 32-bit floats (`array("f")`), about 1.5 KB for 384 dimensions.
    Safe to call from several threads.

    Args:
        embed: `(texts) -> vectors`.
        maxsize: Most texts kept.
    """

    def __init__(
        self, embed: Callable[[Sequence[str]], list[list[float]]], maxsize: int = PER_TEXT
    ):
        self.embed = embed
        self.maxsize = maxsize
        self._vectors: OrderedDict[str, array[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            found = {t: self._vectors[t] for t in texts if t in self._vectors}
            for t in found:
                self._vectors.move_to_end(t)
        todo = list(dict.fromkeys(t for t in texts if t not in found))
        if todo:
            fresh = self.embed(todo)
            with self._lock:
                for t, v in zip(todo, fresh):
                    found[t] = self._vectors[t] = array("f", v)
                while len(self._vectors) > self.maxsize:
                    self._vectors.popitem(last=False)
        return [found[t].tolist() for t in texts]
