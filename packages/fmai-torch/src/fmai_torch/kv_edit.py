"""KV-level editing: cut removed tokens out of a cache and re-rotate the keys that follow.

When fmai evicts a block from the middle of the history, the new prompt is the old one with
spans removed (and a new turn appended). [`plan_edit`][fmai_torch.kv_edit.plan_edit] finds
them by comparing token ids: a kept prefix, removed block(s), kept runs, an appended suffix.
[`RopeEditor`][fmai_torch.kv_edit.RopeEditor] then edits a `DynamicCache` in place:

- `rerotate`: every layer's keys and values keep only the kept positions, and the keys that
  moved are rotated from their old position to their new one. The rotation undoes the stored
  key's rotation with the model's own cos/sin at its old position and applies the cos/sin of
  its new position (the model's rotary module computes both, so its `inv_freq` and attention
  scaling, default, `linear`, `llama3`, `yarn` or any other fixed-frequency RoPE, are the
  ones used), once per edit, from the stored keys.
- `keep-positions`: the same cut without rotation; the kept tokens keep their position ids,
  which then have gaps (the cache records each token's position).

Neither is exact: the kept tokens' keys and values were computed while they attended to the
removed block. `recompute` (crop at the first changed token, prefill the rest) is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EDIT_MODES", "Edit", "RopeEditor", "edit_support", "plan_edit"]

#: The `kv_edit` modes of [`HFBackend`][fmai_torch.HFBackend].
EDIT_MODES = ("recompute", "rerotate", "keep-positions")

# Decoder families whose attention applies full-width, rotate-half RoPE to every layer.
_ROPE_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "granite", "olmo2", "smollm3"})
# RoPE types whose frequencies do not depend on the sequence length.
_FIXED_ROPE = frozenset({"default", "linear", "llama3", "yarn", "proportional"})


@dataclass(frozen=True)
class Edit:
    """Which cached tokens a new prompt keeps.

    Attributes:
        runs: `(start, end)` ranges of the old cache, in order; with the `gaps` computed
            between them, they are the new prompt's first `kept` tokens.
        kept: Tokens of the new prompt covered after the edit (runs and gaps).
        prefix: The plain common prefix (what `recompute` reuses).
        gaps: New tokens to compute just before each run (all 0 for a pure removal; a
            few where a kept part of a message now starts a message and is tokenized
            differently at its first word).
    """

    runs: tuple[tuple[int, int], ...]
    kept: int
    prefix: int
    gaps: tuple[int, ...] = ()

    @property
    def cut(self) -> int:
        """Cached tokens removed between the kept runs (not counting a cropped tail)."""
        if not self.runs:
            return 0
        held = sum(b - a for a, b in self.runs)
        return self.runs[-1][1] - self.runs[0][0] - held


def plan_edit(
    old: Sequence[int],
    new: Sequence[int],
    prefix: int,
    *,
    min_run: int = 8,
    max_runs: int = 16,
    max_gap: int = 0,
) -> Edit:
    """The longest prefix of `new` built from in-order runs of `old` (removals only).

    `prefix` is the common prefix of the two (already known to the caller). After it, each
    further run is a stretch of `old`, later than the previous run, that `new` continues
    with; it must be at least `min_run` tokens long (shorter matches are coincidences, not
    kept history). Matching stops at the first token of `new` that no such run starts at:
    from there on `new` is computed, unless a run starts within `max_gap` tokens: those
    few tokens are then computed in between (`Edit.gaps`). Linear time: a hash of `old`'s
    `min_run`-grams.
    """
    runs: list[tuple[int, int]] = [(0, prefix)] if prefix else []
    gaps: list[int] = [0] if prefix else []
    j, lo = prefix, prefix
    n_old, n_new = len(old), len(new)
    if n_old - lo < min_run or n_new - j < min_run:
        return Edit(tuple(runs), prefix, prefix, tuple(gaps))
    index: dict[tuple[int, ...], list[int]] = {}
    for i in range(lo, n_old - min_run + 1):
        index.setdefault(tuple(old[i : i + min_run]), []).append(i)
    while len(runs) < max_runs and n_new - j >= min_run:
        best, best_len, gap = -1, 0, 0
        for skip in range(max_gap + 1 if runs else 1):
            at = j + skip
            candidates = [i for i in index.get(tuple(new[at : at + min_run]), ()) if i >= lo]
            for i in candidates[:32]:
                k = min_run
                while i + k < n_old and at + k < n_new and old[i + k] == new[at + k]:
                    k += 1
                if k > best_len:
                    best, best_len, gap = i, k, skip
            if best >= 0:
                break
        if best < 0:
            break
        runs.append((best, best + best_len))
        gaps.append(gap)
        j += gap + best_len
        lo = best + best_len
    return Edit(tuple(runs), j, prefix, tuple(gaps))


def edit_support(model: Any) -> str | None:
    """Why `rerotate`/`keep-positions` cannot edit this model's cache, or `None` if they can."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in _ROPE_MODELS:
        return f"model type {kind!r} is not a known full-RoPE decoder"
    if getattr(config, "sliding_window", None) and (
        kind != "qwen2" or getattr(config, "use_sliding_window", False)
    ):
        return "sliding-window attention layers"
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return "layers other than full attention"
    if float(getattr(config, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
        return "partial rotary embeddings"
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    rope_type = "default"
    if isinstance(params, dict):
        rope_type = str(params.get("rope_type", params.get("type", "default")))
    if rope_type not in _FIXED_ROPE:
        return f"RoPE type {rope_type!r} changes its frequencies with the sequence length"
    if len(_rotaries(model)) != 1:
        return "no single rotary-embedding module"
    return None


def _rotaries(model: Any) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "inv_freq") and callable(m)]


def _rotate_half(x: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RopeEditor:
    """Cuts and re-rotates a `DynamicCache` of one model (see the module's description).

    Args:
        model: The loaded model; [`edit_support`][fmai_torch.kv_edit.edit_support] must
            return `None` for it.
    """

    def __init__(self, model: Any) -> None:
        reason = edit_support(model)
        if reason is not None:
            raise ValueError(f"This model's cache cannot be edited: {reason}.")
        self.rotary = _rotaries(model)[0]

    @staticmethod
    def cache_support(cache: Any) -> str | None:
        """Why this cache object cannot be edited, or `None`."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if layers is None:
            return f"unknown cache class {type(cache).__name__}"
        for layer in layers:
            if type(layer) is not DynamicLayer or getattr(layer, "is_sliding", False):
                return f"cache layer {type(layer).__name__}"
        return None

    def cos_sin(self, positions: Any, like: Any) -> tuple[Any, Any]:
        """The model's cos and sin (attention scaling included) at `positions`: `[n, dim]`."""
        cos, sin = self.rotary(like, positions.view(1, -1))
        return cos[0], sin[0]

    def angles(self, old: Any, new: Any, like: Any) -> tuple[Any, Any, Any, Any]:
        """The cos and sin at `old` and at `new` positions, in the working precision of
        keys like `like` (float64 keys: float64, else float32), on its device: what
        [`rotate`][fmai_torch.kv_edit.RopeEditor.rotate] uses; compute once, pass to every
        layer."""
        import torch

        work = torch.float64 if like.dtype == torch.float64 else torch.float32
        probe = like.new_empty((), dtype=work)
        c1, s1 = self.cos_sin(old.to(like.device), probe)
        c2, s2 = self.cos_sin(new.to(like.device), probe)
        return c1, s1, c2, s2

    def rotate(
        self, keys: Any, old: Any, new: Any, angles: tuple[Any, Any, Any, Any] | None = None
    ) -> Any:
        """`keys` (`[batch, heads, n, dim]`) stored at positions `old`, moved to `new`
        (`angles`: [`angles`][fmai_torch.kv_edit.RopeEditor.angles]`(old, new, keys)`, when
        already computed)."""
        c1, s1, c2, s2 = angles if angles is not None else self.angles(old, new, keys)
        k = keys.to(c1.dtype)
        raw = (k * c1 - _rotate_half(k) * s1) / (c1 * c1 + s1 * s1)
        return (raw * c2 + _rotate_half(raw) * s2).to(keys.dtype)

    def rotate_layers(self, keys: list[Any], moved: Any, old: Any, new: Any) -> None:
        """Rotate, in place, the entries `moved` of every layer's `keys` (each
        `[batch, heads, n, dim]`) from positions `old` to `new`.

        The layers' moved keys are rotated together in one batch when they share a device,
        dtype and shape (the usual case: a few kernels a call, not a few per layer, which is
        what costs on a GPU); otherwise per device and dtype. The index and the angles are
        moved to each device once.
        """
        import torch

        groups: dict[Any, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault((k.device, k.dtype, (*k.shape[:-2], k.shape[-1])), []).append(i)
        for (dev, _, _), members in groups.items():
            m, before, after = moved.to(dev), old.to(dev), new.to(dev)
            angles = self.angles(before, after, keys[members[0]])
            batch = torch.stack([keys[i][..., m, :] for i in members])
            turned = self.rotate(batch, before, after, angles)
            for j, i in enumerate(members):
                keys[i][..., m, :] = turned[j]

    def apply(self, cache: Any, index: Any, old: Any, new: Any | None) -> int:
        """Keep the cache entries at `index`; rotate them from `old` to `new` positions.

        `old` and `new` are the kept entries' positions (`new=None`: keep positions). Returns
        the number of keys rotated (per layer).
        """
        import torch

        moves: tuple[Any, Any, Any] | None = None  # the moved entries, their old and new positions
        if new is not None:
            moved = torch.nonzero(old != new).flatten()
            if moved.numel():
                moves = (moved, old[moved], new[moved])
        layers = [
            layer
            for layer in cache.layers
            if layer.is_initialized and layer.keys is not None and layer.keys.numel()
        ]
        on: dict[Any, Any] = {}  # the index, moved to each device once
        kept = []
        for layer in layers:
            dev = layer.keys.device
            if dev not in on:
                on[dev] = index.to(dev)
            kept.append(
                (layer.keys.index_select(-2, on[dev]), layer.values.index_select(-2, on[dev]))
            )
        if moves is not None:
            self.rotate_layers([k for k, _ in kept], *moves)
        for layer, (keys, values) in zip(layers, kept):
            layer.keys, layer.values = keys, values
        return 0 if moves is None else int(moves[0].numel())
