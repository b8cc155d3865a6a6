"""One memo mechanism for the torch-free signals: capped by bytes, registered, cleared together.

Per-text features (content terms, hashed embeddings, information cues, ...) are memoised so
that a text entering memory is processed once (see
[`Policy.prepare`][fmai_core.policies.Policy.prepare]). Each memo is an LRU cache capped
by the memory its entries hold, not by their number: every entry's size is estimated when
it is stored ([`sizeof`][fmai_core.memo.sizeof]: its key and value, with what they
reference), and the least recently used entries go when the total passes the cap. The caps
are sized for what policies look at again, the history in the prompt and the newest
archived turns (recall itself reads the conversation's
[`RecallIndex`][fmai_core.retrieval.RecallIndex], not these caches). So memory stays
bounded however long a conversation runs, and however many run in one process:

| cap | default | holds |
| --- | ---: | --- |
| `PER_TEXT_BYTES` | 4 MiB per memo | per-text features: e.g. ~300 texts' hashed embeddings |
| `PER_SET_BYTES` | 4 MiB per memo | per-candidate-set results (indexes, topics) |
| `EMBEDDING_BYTES` | 16 MiB per conversation | ~8,000 model embeddings of 384 dimensions |

An entry's bytes depend on the text: for a chat message of 20-60 words a hashed embedding
holds about 14 KB, its content terms about 1.2 KB, its duplicate key under 1 KB. The
fifteen memos of the core together hold at most about 64 MiB in a process (measured by
`benchmarks/long_conversation.py`: about 30 MiB after 2,000 turns of one conversation).
"""

from __future__ import annotations

import random
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

__all__ = [
    "EMBEDDING_BYTES",
    "PER_SET",
    "PER_SET_BYTES",
    "PER_TEXT",
    "PER_TEXT_BYTES",
    "EmbeddingCache",
    "MemoInfo",
    "clear_caches",
    "memo",
    "memo_bytes",
    "registered",
    "sizeof",
]

F = TypeVar("F", bound=Callable[..., Any])

# Bytes a per-text memo may hold: a few conversations' histories and their newest archive.
PER_TEXT_BYTES = 4 << 20
# Bytes a per-candidate-set memo (indexes, topics) may hold: the last few sets.
PER_SET_BYTES = 4 << 20
# The same caps under the names they had when they counted entries (they are bytes now).
PER_TEXT = PER_TEXT_BYTES
PER_SET = PER_SET_BYTES
# Bytes of model embeddings an `EmbeddingCache` may hold.
EMBEDDING_BYTES = 16 << 20
# What an entry costs the cache itself beyond its key and value: the ordered dict's slot and
# link node, and the (value, size) pair it stores (measured on CPython 3.11: about 150 bytes).
ENTRY_BYTES = 152
# Of a container with more items than this, `sizeof` follows a random sample of this many.
_SAMPLE = 16
_LEAVES = (str, bytes, int, float, complex, bool, array, type(None), range)
_LEAF_TYPES = frozenset(_LEAVES)
# Picks which of a container's inner objects `sizeof` follows (seeded by the OS: unpredictable)
_RANDOM = random.Random()
# `inspect.CO_VARARGS` and `inspect.CO_VARKEYWORDS` (inspect is slow to import)
_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08

_REGISTRY: list[Any] = []
_KWARGS = object()  # marks a key built from several or keyword arguments


class MemoInfo(NamedTuple):
    """What a memo holds: hits and misses since it was cleared, its cap, entries and bytes."""

    hits: int
    misses: int
    max_bytes: int
    currsize: int
    bytes: int


def sizeof(obj: object) -> int:
    """An estimate of the bytes `obj` holds, with everything it references.

    `sys.getsizeof` of the object and of what it reaches (container items, mapping keys and
    values, instance attributes and slots), each object counted once. Of a container of
    more than 16 items, every item's own size is counted, but only a random sample of 16 is
    followed into what it holds, scaled to the container's length, so that measuring a
    large index costs little more than reading its items once. The sample is random, not at
    fixed positions, so that no arrangement of long and short messages (a client chooses
    them) hides bytes from the estimate: it is right on average. Shared objects (interned
    strings, small integers, an item of several large containers) are counted as if owned;
    the estimate errs on the high side.
    """
    getsizeof = sys.getsizeof
    leaves = _LEAF_TYPES
    seen: set[int] = {id(obj)}
    total = float(getsizeof(obj))
    stack: list[tuple[object, float]] = [(obj, 1.0)]
    while stack:
        o, scale = stack.pop()
        items: Sequence[object]
        if isinstance(o, dict):
            items = [*o.keys(), *o.values()]
        elif isinstance(o, (tuple, list, set, frozenset)):
            items = o if isinstance(o, (tuple, list)) else list(o)
        elif isinstance(o, _LEAVES):
            continue
        else:
            found: list[object] = []
            attributes = getattr(o, "__dict__", None)
            if attributes is not None:
                found.append(attributes)
            for cls in type(o).__mro__:
                for slot in cls.__dict__.get("__slots__", ()):
                    value = getattr(o, slot, None)
                    if value is not None:
                        found.append(value)
            items = found
        if len(items) > _SAMPLE:
            # every item's own bytes (a C loop), then what a random 16 of them hold, scaled
            total += sum(map(getsizeof, items)) * scale
            inner_scale = scale * len(items) / _SAMPLE
            for item in _RANDOM.sample(items, _SAMPLE):
                if type(item) not in leaves and id(item) not in seen:
                    seen.add(id(item))
                    stack.append((item, inner_scale))
            continue
        for item in items:
            if id(item) in seen:
                continue
            seen.add(id(item))
            total += getsizeof(item) * scale
            if type(item) not in leaves:
                stack.append((item, scale))
    return int(total)


def memo(max_bytes: int = PER_TEXT_BYTES) -> Callable[[F], F]:
    """An LRU memo of the function's results, capped at `max_bytes`, registered so that
    `clear_caches` empties it.

    Arguments must be hashable. Each entry costs [`sizeof`][fmai_core.memo.sizeof] of its
    key and value plus `ENTRY_BYTES`; a result larger than the cap is returned, not stored.
    Past the cap the oldest entries go, except that one used since it was stored (or since
    it was last spared) is spared once and moves to the newest end: least recently used
    order, approximated ("second chance"), so that a hit costs a dictionary lookup. The
    wrapper has `cache_info()` ([`MemoInfo`][fmai_core.memo.MemoInfo]) and `cache_clear()`,
    like `functools.lru_cache`'s, and is safe to call from several threads.
    """
    if max_bytes < 4096:
        raise ValueError(
            f"memo caps are in bytes: {max_bytes} would hold next to nothing "
            "(use PER_TEXT_BYTES, PER_SET_BYTES or a size in bytes)"
        )

    def wrap(fn: F) -> F:
        # key -> [value, size, used since stored or spared]
        entries: OrderedDict[Any, list[Any]] = OrderedDict()
        lock = threading.Lock()
        held = [0, 0, 0]  # bytes, hits, misses

        def store(key: Any, value: Any) -> Any:
            size = sizeof((key, value)) + ENTRY_BYTES
            with lock:
                held[2] += 1
                if size > max_bytes or key in entries:
                    return value
                entries[key] = [value, size, False]
                held[0] += size
                spared = 0
                while held[0] > max_bytes:
                    old, entry = entries.popitem(last=False)
                    if entry[2] and spared < len(entries):
                        entry[2] = False
                        entries[old] = entry
                        spared += 1
                    else:
                        held[0] -= entry[1]
            return value

        code = getattr(fn, "__code__", None)
        single = (
            code is not None
            and code.co_argcount == 1
            and code.co_kwonlyargcount == 0
            and not code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS)
        )
        if single:

            def cached(arg: Any) -> Any:
                try:
                    entry = entries[arg]
                except KeyError:
                    return store(arg, fn(arg))
                entry[2] = True
                held[1] += 1
                return entry[0]

        else:

            def cached(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                key = args[0] if len(args) == 1 and not kwargs else (_KWARGS, args, *kwargs.items())
                try:
                    entry = entries[key]
                except KeyError:
                    return store(key, fn(*args, **kwargs))
                entry[2] = True
                held[1] += 1
                return entry[0]

        def cache_info() -> MemoInfo:
            with lock:
                return MemoInfo(held[1], held[2], max_bytes, len(entries), held[0])

        def cache_clear() -> None:
            with lock:
                entries.clear()
                held[:] = [0, 0, 0]

        cached.cache_info = cache_info  # type: ignore[attr-defined]
        cached.cache_clear = cache_clear  # type: ignore[attr-defined]
        cached.__wrapped__ = fn  # type: ignore[attr-defined]
        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(cached, name, getattr(fn, name))
        cached.__annotations__ = fn.__annotations__
        _REGISTRY.append(cached)
        return cached  # type: ignore[return-value]

    return wrap


def registered() -> list[Any]:
    """The registered memos (each has `cache_info()` and `cache_clear()`)."""
    return list(_REGISTRY)


def memo_bytes() -> int:
    """The bytes held by every registered memo together (their entries' estimates)."""
    return sum(cached.cache_info().bytes for cached in _REGISTRY)


def clear_caches() -> None:
    """Empty every registered memo (to free memory or to measure cold-start cost)."""
    for cached in _REGISTRY:
        cached.cache_clear()


class EmbeddingCache:
    """Wraps an embed function so that each text is embedded once (an LRU by text).

    The engine embeds every message as it enters memory; the policies ask for the same
    texts again (an eviction ranks the history by relevance), and get them from here.
    Vectors are kept as 32-bit floats (`array("f")`), about 1.6 KB for 384 dimensions,
    and the cache is capped by the bytes of its texts and vectors together. Safe to call
    from several threads.

    Args:
        embed: `(texts) -> vectors`.
        max_bytes: Most bytes kept (texts, vectors and the cache's own overhead).
    """

    def __init__(
        self,
        embed: Callable[[Sequence[str]], list[list[float]]],
        max_bytes: int = EMBEDDING_BYTES,
    ):
        self.embed = embed
        self.max_bytes = max_bytes
        self.bytes = 0
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
            getsizeof = sys.getsizeof
            with self._lock:
                for t, v in zip(todo, fresh):
                    vector = found[t] = array("f", v)
                    if t in self._vectors:
                        continue
                    self._vectors[t] = vector
                    self.bytes += getsizeof(t) + getsizeof(vector) + ENTRY_BYTES
                while self.bytes > self.max_bytes and self._vectors:
                    t, vector = self._vectors.popitem(last=False)
                    self.bytes -= getsizeof(t) + getsizeof(vector) + ENTRY_BYTES
        return [found[t].tolist() for t in texts]
