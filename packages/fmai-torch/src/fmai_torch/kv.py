"""Cross-turn KV cache: one `DynamicCache` kept in step with the exact token ids it holds.

Each turn the backend renders the whole prompt, and this class

1. finds the longest common prefix between the cached ids and the new prompt ids,
2. crops the cache to that prefix (always leaving at least one prompt token to compute, so
   the model produces logits for the next token),
3. hands the cropped cache to `model.generate(input_ids=<full prompt>, ...)`, which then
   prefills only the uncached suffix,
4. after generation, records the ids the cache now covers: prompt + generated tokens, up to
   `cache.get_seq_length()` (the last generated token is never fed back, so its keys and
   values are not in the cache).

The cache is never trusted beyond the ids it records: if anything goes wrong mid-call it is
dropped and the next turn recomputes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KVCache", "cache_kwarg", "common_prefix"]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: most of a long prompt is shared.
    step = 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def cache_kwarg() -> str:
    """The name under which `generate` takes a cache in the installed transformers.

    transformers 5 renamed `past_key_values` to `cache` (the old name warns, then goes).
    """
    from transformers.generation import utils

    names = getattr(utils, "ALL_CACHE_NAMES", [])
    return "cache" if "cache" in names else "past_key_values"


class KVCache:
    """A `DynamicCache` and the token ids whose keys and values it holds.

    Attributes:
        ids: The token ids the cache covers, in order (`len(ids) == cache length`).
    """

    def __init__(self) -> None:
        self._cache: Any = None
        self.ids: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    def reset(self) -> None:
        """Forget everything (the next turn recomputes its whole prompt)."""
        self._cache = None
        self.ids = []

    def prepare(self, prompt: list[int]) -> tuple[Any, int]:
        """Crop the cache to its common prefix with `prompt`; return `(cache, reused)`.

        `reused` tokens of `prompt` are served from the cache; generation must prefill
        `len(prompt) - reused` tokens (at least one).
        """
        from transformers import DynamicCache

        keep = min(common_prefix(self.ids, prompt), len(prompt) - 1)
        if keep <= 0 or self._cache is None:
            self._cache = DynamicCache()
            self.ids = []
            return self._cache, 0
        held = int(self._cache.get_seq_length())
        if held != len(self.ids):  # out of step: never trust it
            self._cache = DynamicCache()
            self.ids = []
            return self._cache, 0
        if keep < held:
            if not getattr(self._cache, "is_croppable", True):
                self._cache = DynamicCache()
                self.ids = []
                return self._cache, 0
            self._cache.crop(keep - held)  # a negative count: remove that many from the end
            self.ids = self.ids[:keep]
        if int(self._cache.get_seq_length()) != keep:
            self._cache = DynamicCache()
            self.ids = []
            return self._cache, 0
        return self._cache, keep

    def commit(self, sequence: list[int]) -> None:
        """Record the ids the cache covers after a generation over `sequence` (prompt + reply)."""
        if self._cache is None:
            self.ids = []
            return
        held = int(self._cache.get_seq_length())
        if held > len(sequence):
            self.reset()
            return
        self.ids = list(sequence[:held])
