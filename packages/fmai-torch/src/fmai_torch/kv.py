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

With `mode="rerotate"` or `"keep-positions"`, step 2 first tries an edit (see
[`fmai_torch.kv_edit`][fmai_torch.kv_edit]): when the new prompt is the cached ids with
spans removed (an eviction), the removed tokens are cut out of every layer and the kept
tokens after them are reused too. The cache then records each token's position id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fmai_torch.kv_edit import EDIT_MODES, RopeEditor, plan_edit

__all__ = ["MIN_GAIN", "KVCache", "Prepared", "attention_bias", "cache_kwarg", "common_prefix"]

#: An edit must serve at least this many more tokens than the plain crop would (fewer are
#: cheaper to prefill than to splice).
MIN_GAIN = 16
#: Shortest run of ids that an edit keeps or splices back (shorter matches are coincidences).
MIN_RUN = 8
#: `keep_evicted`: a run that needs tokens computed before it is spliced back only when it is
#: this long, and at most this many such gaps a turn. All the tokens computed between runs go
#: through one forward pass (an attention mask lets each see only what precedes it), so any
#: run worth keeping is worth splicing; the gap limit bounds the mask and the index work.
SPLICE_AFTER_GAP = MIN_RUN
MAX_SPLICE_GAPS = 64
#: The same rule where each gap is a forward pass of its own (`KVCache.batch_gaps` off): a
#: pass costs about what prefilling a couple of dozen tokens at once does on a CPU.
SEQUENTIAL_SPLICE = (32, 8)


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


def attention_bias(visible: Any, dtype: Any) -> Any:
    """The additive `(1, 1, q, k)` attention mask of `dtype` for a boolean `(q, k)` one
    (`True`: may attend), which eager and SDPA attention both take as a custom 4D mask."""
    import torch

    bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    bias.masked_fill_(~visible, torch.finfo(dtype).min)
    return bias[None, None]


def cache_kwarg() -> str:
    """The name under which `generate` takes a cache in the installed transformers.

    transformers 5 renamed `past_key_values` to `cache` (the old name warns, then goes).
    """
    from transformers.generation import utils

    names = getattr(utils, "ALL_CACHE_NAMES", [])
    return "cache" if "cache" in names else "past_key_values"


@dataclass
class Prepared:
    """A cache made ready for one generation (by
    [`KVCache.prepare`][fmai_torch.kv.KVCache.prepare]).

    Attributes:
        cache: The `DynamicCache` to hand to `generate`.
        reused: Prompt tokens it already holds.
        position_ids: The position id of every prompt token when they are not `0..n-1`
            (after a `keep-positions` edit), else `None`.
        info: What happened: `mode`, `applied` (`"recompute"`, `"rerotate"` or
            `"keep-positions"`), `cut_tokens`, `rotated_tokens`, `edit_ms`, and `fallback`
            (why an edit mode recomputed) when it did.
    """

    cache: Any
    reused: int
    position_ids: list[int] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class KVCache:
    """A `DynamicCache`, the token ids whose keys and values it holds, and their positions.

    Args:
        mode: `"recompute"` (crop at the first changed token), `"rerotate"` or
            `"keep-positions"` (see [`fmai_torch.kv_edit`][fmai_torch.kv_edit]).
        editor: The model's [`RopeEditor`][fmai_torch.kv_edit.RopeEditor] (edit modes).
        fallback: Why the edit modes cannot be used on this model (then every turn
            recomputes and says so in `info["fallback"]`).
        max_position: The model's context (`keep-positions` never passes it; 0: no limit).
        keep_evicted: `rerotate` only: keep the keys and values of up to this many tokens
            that leave the cache (cut by an edit or cropped), and splice runs of them back,
            rotated to their new positions, where a later prompt has the same ids again (a
            recalled segment that was once history); oldest out first, a run that does
            not fit whole keeping its last tokens. 0 (the default): off. Not exact: they
            were computed in the context they left.

    Attributes:
        ids: The token ids the cache covers, in order (`len(ids) == cache length`).
        positions: The position id of each cached token (`0..n-1` unless `keep-positions`
            cut something).
    """

    def __init__(
        self,
        mode: str = "recompute",
        editor: RopeEditor | None = None,
        fallback: str | None = None,
        max_position: int = 0,
        keep_evicted: int = 0,
    ) -> None:
        if mode not in EDIT_MODES:
            raise ValueError(f"kv_edit must be one of {', '.join(EDIT_MODES)}, got {mode!r}.")
        if mode != "recompute" and editor is None and fallback is None:
            fallback = "no editor for this model"
        self.mode = mode
        self.editor = editor
        self.fallback = fallback if mode != "recompute" else None
        self.max_position = max_position
        #: Runs the model over tokens at given positions, appending their keys and values to a
        #: cache; the fourth argument, when not `None`, is a boolean `(tokens, cache length +
        #: tokens)` tensor saying which keys each token may attend to. It lets a `rerotate`
        #: edit compute the tokens between kept runs, all in one pass; set by the backend.
        self.forward: Callable[[list[int], list[int], Any, Any], None] | None = None
        self.keep_evicted = keep_evicted if mode == "rerotate" and not self.fallback else 0
        #: Runs of tokens that left the cache: `(ids, positions, [(keys, values) per layer])`.
        self._evicted: list[tuple[list[int], list[int], list[tuple[Any, Any]]]] = []
        self._kept: list[tuple[int, int]] = []  # the old cache's ranges this turn keeps
        #: `keep_evicted`: shortest run spliced back after computed tokens, and most such
        #: gaps a turn (each gap is a forward pass of its own).
        self.splice_after_gap = SPLICE_AFTER_GAP
        self.max_splice_gaps = MAX_SPLICE_GAPS
        #: Compute all the tokens between kept or spliced runs in one forward pass with a
        #: custom attention mask (the backend turns it off for attention implementations
        #: that take none, e.g. flash attention: then each gap is a pass of its own).
        self.batch_gaps = True
        #: `keep_evicted`: the first this-many tokens of each spliced run are computed with
        #: the gap before it instead of reused (their keys and values were made after other
        #: text; an experiment on the quality cost, 0 by default: see the KV cache docs).
        self.fresh_run_start = 0
        self._cache: Any = None
        self.ids: list[int] = []
        self.positions: list[int] = []
        self._reused = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def next_position(self) -> int:
        """The position id the next token after the cache gets."""
        return self.positions[-1] + 1 if self.positions else 0

    def reset(self) -> None:
        """Forget everything (the next turn recomputes its whole prompt)."""
        self._evicted = []
        self._cache = None
        self.ids = []
        self.positions = []
        self._reused = 0

    def _fresh(self, info: dict[str, Any]) -> Prepared:
        from transformers import DynamicCache

        self.reset()
        self._cache = DynamicCache()
        return Prepared(self._cache, 0, None, info)

    def prepare(self, prompt: list[int], room: int = 0) -> Prepared:
        """Make the cache ready for `prompt`: edit or crop it, and say how much it serves.

        `room` is the most tokens generation may add (`keep-positions` keeps every position
        id below `max_position`). Generation must prefill `len(prompt) - reused` tokens (at
        least one). If anything raises here (an edit or a splice changes the cache's layers
        one by one, and computes tokens on the model), the cache is dropped before the
        error goes on: a half-edited cache never serves a later turn.
        """
        try:
            return self._prepare(prompt, room)
        except BaseException:
            self.reset()
            raise

    def _prepare(self, prompt: list[int], room: int) -> Prepared:
        import time

        info: dict[str, Any] = {"mode": self.mode, "applied": "recompute"}
        if self.fallback:
            info["fallback"] = self.fallback
        keep = min(common_prefix(self.ids, prompt), len(prompt) - 1)
        if keep <= 0 or self._cache is None:
            return self._fresh(info)
        held = int(self._cache.get_seq_length())
        if held != len(self.ids) or len(self.positions) != held:  # out of step: never trust it
            return self._fresh(info)
        before = None
        if self.keep_evicted:
            layers = self.layers()
            before = (list(self.ids), list(self.positions), layers) if layers else None
        self._kept = [(0, keep)]
        if self.mode != "recompute" and not self.fallback and keep < held:
            t0 = time.perf_counter()
            done = self._edit(prompt, keep, info)
            if done is not None:
                info["edit_ms"] = round((time.perf_counter() - t0) * 1000, 3)
                keep = done
        if keep < len(self.ids):
            if not getattr(self._cache, "is_croppable", True):
                return self._fresh(info)
            self._cache.crop(keep - len(self.ids))  # negative: remove that many from the end
            self.ids = self.ids[:keep]
            self.positions = self.positions[:keep]
        if int(self._cache.get_seq_length()) != keep:
            return self._fresh(info)
        if before is not None:
            t0 = time.perf_counter()
            self._remember_evicted(*before)
            keep = self._splice_evicted(prompt, keep, info)
            info["evicted_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        start = self.next_position
        if self.max_position and start + len(prompt) - keep + room > self.max_position:
            info["fallback"] = "position ids would pass the model's context"
            return self._fresh(info)
        self._reused = keep
        positions = None
        if self.positions[-1] != keep - 1:
            positions = self.positions + list(range(start, start + len(prompt) - keep))
        return Prepared(self._cache, keep, positions, info)

    def _edit(self, prompt: list[int], prefix: int, info: dict[str, Any]) -> int | None:
        """Cut removed spans out of the cache; return the tokens it then serves, or None."""
        import torch

        assert self.editor is not None
        reason = self.editor.cache_support(self._cache)
        if reason is not None:
            info["fallback"] = reason
            return None
        gap = 4 if (self.mode == "rerotate" and self.forward is not None) else 0
        edit = plan_edit(self.ids, prompt, prefix, max_gap=gap)
        limit = len(prompt) - 1
        if min(edit.kept, limit) < prefix + MIN_GAIN:  # not worth an edit over the crop
            return None
        pieces, total = [], 0
        for (a, b), g in zip(edit.runs, edit.gaps):
            take = min(b - a, limit - total - g)
            if take <= 0:
                break
            pieces.append((g, a, a + take))
            total += g + take
        if any(g for g, _, _ in pieces):
            rotated = self._splice(prompt, pieces)
        else:
            index = torch.cat([torch.arange(a, b) for _, a, b in pieces])
            old = torch.tensor(self.positions, dtype=torch.long)[index]
            new = torch.arange(total) if self.mode == "rerotate" else None
            rotated = self.editor.apply(self._cache, index, old, new)
            self.ids = [self.ids[i] for _, a, b in pieces for i in range(a, b)]
            self.positions = list(range(total)) if new is not None else old.tolist()
        self._kept = [(a, b) for _, a, b in pieces]
        held = sum(b - a for _, a, b in pieces)
        info.update(
            applied=self.mode,
            cut_tokens=pieces[-1][2] - pieces[0][1] - held,
            rotated_tokens=rotated,
            runs=len(pieces),
            computed_between=sum(g for g, _, _ in pieces),
        )
        return total

    def _remember_evicted(
        self, ids: list[int], positions: list[int], layers: list[tuple[Any, Any]]
    ) -> None:
        """Keep the runs (8 tokens or more) of the old cache that this turn did not keep.

        Within `keep_evicted` tokens, oldest out first: this turn's runs (the last one
        first) before those kept earlier. A run that does not fit whole keeps as many of
        its last tokens as fit, when that is 8 or more (a `keep_evicted` smaller than one
        evicted block still keeps part of it). Only what is kept is copied.
        """
        kept = sorted(self._kept)
        gone, at = [], 0
        for a, b in kept:
            if a - at >= MIN_RUN:
                gone.append((at, a))
            at = max(at, b)
        if len(ids) - at >= MIN_RUN:
            gone.append((at, len(ids)))
        room = self.keep_evicted
        runs: list[tuple[list[int], list[int], list[tuple[Any, Any]]]] = []
        for start, b in reversed(gone):
            if room < MIN_RUN:
                break
            a = max(start, b - room)
            part = [(k[..., a:b, :].clone(), v[..., a:b, :].clone()) for k, v in layers]
            runs.append((ids[a:b], positions[a:b], part))
            room -= b - a
        for run_ids, pos, part in reversed(self._evicted):
            if room < MIN_RUN:
                break
            o = max(0, len(run_ids) - room)  # a run that does not fit: its last `room` tokens
            if o:  # copied, so the rest is freed
                cut = [(k[..., o:, :].clone(), v[..., o:, :].clone()) for k, v in part]
                runs.append((run_ids[o:], pos[o:], cut))
            else:
                runs.append((run_ids, pos, part))
            room -= len(run_ids) - o
        self._evicted = runs[::-1]

    def _splice_evicted(self, prompt: list[int], keep: int, info: dict[str, Any]) -> int:
        """Append runs of evicted tokens that the prompt continues with after `keep`, rotated
        to their new positions, computing the tokens between them; return the new `keep`."""
        import torch

        if not self._evicted or self.forward is None or self.positions != list(range(keep)):
            return keep
        index: dict[tuple[int, ...], tuple[int, int]] = {}
        for e, (ids, _, _) in enumerate(self._evicted):  # newer runs win
            for o in range(len(ids) - MIN_RUN + 1):
                index[tuple(ids[o : o + MIN_RUN])] = (e, o)
        limit = len(prompt) - 1
        plan: list[tuple[int, int, int, int]] = []  # (gap, run, offset, length)
        i = k = keep
        while k + MIN_RUN <= limit:
            if k > i and len(plan) >= self.max_splice_gaps:
                break  # no more gaps: nothing after here can be spliced (k only grows)
            hit = index.get(tuple(prompt[k : k + MIN_RUN]))
            if hit is None:
                k += 1
                continue
            e, o = hit
            ids = self._evicted[e][0]
            n, most = MIN_RUN, min(len(ids) - o, limit - k)
            while n < most and ids[o + n] == prompt[k + n]:
                n += 1
            if k > i and n < self.splice_after_gap:
                k += 1  # too short to be worth the computed tokens before it
                continue
            plan.append((k - i, e, o, n))
            i = k = k + n
        if self.fresh_run_start:
            fresh = self.fresh_run_start
            plan = [
                (g + min(fresh, n - 1), e, o + min(fresh, n - 1), n - min(fresh, n - 1))
                for g, e, o, n in plan
            ]
        served = sum(n for _, _, _, n in plan)
        if served < MIN_GAIN:
            return keep
        runs = []
        for gap, e, o, n in plan:
            _, pos, part = self._evicted[e]
            old = torch.tensor(pos[o : o + n], dtype=torch.long)
            runs.append((gap, old, [(k[..., o : o + n, :], v[..., o : o + n, :]) for k, v in part]))
        j, _ = self._assemble(prompt, keep, runs)
        gaps = sum(g for g, _, _, _ in plan)
        info["applied"] = "rerotate"
        info["from_evicted"] = served
        info["computed_between"] = info.get("computed_between", 0) + gaps
        return j

    def _splice(self, prompt: list[int], pieces: list[tuple[int, int, int]]) -> int:
        """Rebuild the cache from kept runs and a few computed tokens between them
        (`rerotate` only); return the keys rotated per layer."""
        import torch

        orig = [(layer.keys, layer.values) for layer in self._cache.layers]
        old_pos = torch.tensor(self.positions, dtype=torch.long)
        for layer, (k, v) in zip(self._cache.layers, orig):
            layer.keys, layer.values = k[..., :0, :], v[..., :0, :]
        runs = []
        for gap, a, b in pieces:
            idx = torch.arange(a, b)
            kv = []
            for k, v in orig:
                at = idx.to(k.device)
                kv.append((k.index_select(-2, at), v.index_select(-2, at)))
            runs.append((gap, old_pos[idx], kv))
        _, rotated = self._assemble(prompt, 0, runs)
        return rotated

    def _assemble(
        self, prompt: list[int], start: int, runs: list[tuple[int, Any, list[tuple[Any, Any]]]]
    ) -> tuple[int, int]:
        """Append `runs` to the cache, which holds `prompt[:start]` at positions `0..start-1`.

        Each run is `(gap, old positions, [(keys, values) per layer])`: `gap` prompt tokens
        to compute before it, then its keys and values, the keys rotated from their old
        positions to their new ones. The runs go in first; then all the gaps' tokens go
        through the model in one forward pass, each attending only to what precedes it in
        the prompt, as a prefill would; then every layer is put back in prompt order. (With
        `batch_gaps` off, for attention that takes no custom mask, each gap is computed on
        its own, right before its run.) Sets `ids` and `positions`; returns the prompt
        tokens the cache then holds and the keys rotated (per layer).
        """
        import torch

        assert self.editor is not None
        layers = list(self._cache.layers)
        parts: list[list[tuple[Any, Any]]] = [[(lay.keys, lay.values)] for lay in layers]
        held = list(range(start))  # the position of each cache entry, in cache order
        gap_ids: list[int] = []
        gap_pos: list[int] = []
        j, rotated = start, 0

        def flush() -> None:
            for layer, into in zip(layers, parts):
                layer.keys = torch.cat([k for k, _ in into], dim=-2)
                layer.values = torch.cat([v for _, v in into], dim=-2)
                into[:] = [(layer.keys, layer.values)]

        for gap, old, kv in runs:
            if gap and not self.batch_gaps:  # computed here, on the cache as it stands
                assert self.forward is not None
                flush()
                self.forward(prompt[j : j + gap], list(range(j, j + gap)), self._cache, None)
                for layer, into in zip(layers, parts):
                    into[:] = [(layer.keys, layer.values)]
                held += range(j, j + gap)
                j += gap
            elif gap:
                gap_ids += prompt[j : j + gap]
                gap_pos += range(j, j + gap)
                j += gap
            n = int(old.numel())
            new = torch.arange(j, j + n)
            moved = torch.nonzero(old != new).flatten()
            rotated += int(moved.numel())
            keys = [k for k, _ in kv]
            if moved.numel():
                keys = [k.clone() for k in keys]  # (views of stored runs)
                self.editor.rotate_layers(keys, moved, old[moved], new[moved])
            for into, k, (_, v) in zip(parts, keys, kv):
                into.append((k, v))
            held += range(j, j + n)
            j += n
        flush()
        if gap_ids:
            assert self.forward is not None
            every = torch.tensor(held + gap_pos)
            query = torch.tensor(gap_pos)
            self.forward(gap_ids, gap_pos, self._cache, every[None, :] <= query[:, None])
            if held != list(range(len(held))):  # a gap before a run: back into prompt order
                order = torch.argsort(every)
                for layer in layers:
                    at = order.to(layer.keys.device)
                    layer.keys = layer.keys.index_select(-2, at)
                    layer.values = layer.values.index_select(-2, at)
        self.ids = list(prompt[:j])
        self.positions = list(range(j))
        return j, rotated

    def commit(self, sequence: list[int]) -> None:
        """Record the ids the cache covers after a generation over `sequence` (prompt + reply)."""
        if self._cache is None:
            self.reset()
            return
        held = int(self._cache.get_seq_length())
        if held > len(sequence) or held < self._reused:
            self.reset()
            return
        start = self.next_position if self._reused else 0
        self.positions = self.positions[: self._reused] + list(
            range(start, start + held - self._reused)
        )
        self.ids = list(sequence[:held])

    # -- moving and storing ----------------------------------------------------------------
    def layers(self) -> list[tuple[Any, Any]]:
        """Every layer's `(keys, values)` (empty when the cache holds nothing)."""
        if self._cache is None or not self.ids:
            return []
        out = []
        for layer in self._cache.layers:
            if not layer.is_initialized or layer.keys is None:
                return []
            out.append((layer.keys, layer.values))
        return out

    def restore(
        self,
        layers: list[tuple[Any, Any]],
        ids: list[int],
        positions: list[int],
        evicted: list[tuple[list[int], list[int], list[tuple[Any, Any]]]] | None = None,
    ) -> None:
        """Hold exactly these keys and values, covering `ids` at `positions`, and the kept
        evicted runs `evicted` (oldest first; the newest whole runs within `keep_evicted`)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(layers):
            cache.update(k, v, i)
        self.reset()
        self._cache = cache
        self.ids = list(ids)
        self.positions = list(positions)
        room, kept = self.keep_evicted, []
        for run in reversed(evicted or []):
            if len(run[0]) > room:
                break
            kept.append(run)
            room -= len(run[0])
        self._evicted = kept[::-1]

    @property
    def evicted(self) -> list[tuple[list[int], list[int], list[tuple[Any, Any]]]]:
        """The kept evicted runs (`keep_evicted`): `(ids, positions, [(keys, values) per
        layer])`, oldest first."""
        return list(self._evicted)

    def to(self, device: Any) -> None:
        """Move the keys and values to `device` (host memory: `"cpu"`), the kept evicted
        tokens (`keep_evicted`) with them."""
        if self._cache is not None:
            for layer in self._cache.layers:
                if layer.is_initialized and layer.keys is not None:
                    layer.keys = layer.keys.to(device)
                    layer.values = layer.values.to(device)
                    layer.device = layer.keys.device
        self._evicted = [
            (ids, pos, [(k.to(device), v.to(device)) for k, v in part])
            for ids, pos, part in self._evicted
        ]

    @property
    def nbytes(self) -> int:
        """Bytes of keys and values held, the kept evicted tokens (`keep_evicted`) included."""
        held = sum(k.numel() * k.element_size() * 2 for k, _ in self.layers())
        kept = sum(
            k.numel() * k.element_size() + v.numel() * v.element_size()
            for _, _, part in self._evicted
            for k, v in part
        )
        return int(held + kept)

    @property
    def evicted_tokens(self) -> int:
        """Tokens whose keys and values `keep_evicted` holds for splicing back."""
        return sum(len(ids) for ids, _, _ in self._evicted)
