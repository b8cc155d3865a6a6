"""Compiled decoding: a static KV cache and a `torch.compile`d one-token forward.

[`HFBackend`][fmai_torch.HFBackend] uses this on CUDA (`compile="auto"`), where an eager
forward of a small model is bound by the host launching every small kernel; CUDA graphs
(`mode="reduce-overhead"`) replay the whole decode step as one launch. Measured by
`benchmarks/decode_gpu.py` and `benchmarks/decode_backend_gpu.py` (see the Benchmarks page).

One turn:

1. the prompt's uncached suffix is prefilled **eagerly** into the cross-turn `DynamicCache`
   (exactly what `generate` does, so TTFT and the prefill's numbers are unchanged);
2. the cache's keys and values are copied into a `StaticCache` of fixed capacity (one
   buffer kept by the backend, reallocated only when a turn needs more: capacities are
   1024 x {1, 1.5, 2, 3, 4, 6, ...}, so a growing conversation compiles a few shapes);
3. each new token runs the compiled forward over the static cache, its attention as two
   matmuls and a float32 softmax (`matmul_attention`): for one query row over a long cache
   this is a wide matrix-vector product per KV head, where a fused SDPA kernel given a mask
   over the whole static cache was 5x slower at 8k (see the Benchmarks page). The next
   step is launched before the host reads the token, so the GPU is never idle waiting for
   Python; a token that ends the reply costs one step of work that is thrown away;
4. the keys and values of the tokens fed back are appended to the `DynamicCache`, so
   cross-turn reuse, cache edits, the KV pool and KV files work as with `generate`.

Greedy, temperature/top-k/top-p sampling, `min_new_tokens`, stop strings, streaming and
cancellation run here; `repetition_penalty` and prompts whose position ids have gaps
(`kv_edit="keep-positions"` after a cut) use `generate`. If compiling fails, the turn goes on
with an eager loop over the `DynamicCache` from the token it had reached, and later turns use
`generate` (`CompiledDecoder.disabled` says why).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ATTENTION", "CompiledDecoder", "matmul_attention", "resolve_compile"]

#: The name under which the decode steps' attention is registered with transformers.
ATTENTION = "fmai_matmul"

_registered = threading.Lock()
_done: list[bool] = []


def matmul_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention as two matmuls and a float32 softmax, the query heads grouped per KV head."""
    import torch

    b, heads, q, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else d**-0.5
    qg = query.reshape(b, kv_heads, groups * q, d)
    scores = torch.matmul(qg, key.transpose(-1, -2)).float() * scale
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=scores.dtype, device=mask.device).masked_fill(
                ~mask, float("-inf")
            )
        mask = mask.expand(b, heads, q, mask.shape[-1]).reshape(b, kv_heads, groups * q, -1)
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value).reshape(b, heads, q, d).transpose(1, 2).contiguous()
    return out, None


def _register() -> None:
    with _registered:
        if _done:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION, matmul_attention)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)
        _done.append(True)


def resolve_compile(compile: bool | str, device: Any) -> str | None:
    """The `torch.compile` backend for `HFBackend(compile=...)`, or `None` (eager `generate`).

    `"auto"`: `"inductor"` on CUDA, `None` elsewhere (on the CPU compiling costs tens of
    seconds a start and was not measured faster); `True`: `"inductor"`; `False`: `None`; any
    other string names a `torch.compile` backend (`"eager"` traces the same graph without
    code generation: the tests use it to check the path on the CPU).
    """
    if compile == "auto":
        return "inductor" if device.type == "cuda" else None
    if compile is True:
        return "inductor"
    if compile is False or compile is None:
        return None
    return str(compile)


def capacity(needed: int, limit: int = 0) -> int:
    """The static cache's length for `needed` tokens: 1024 x {1, 1.5, 2, 3, 4, 6, ...}."""
    cap, half = 1024, False
    while cap < needed:
        cap = cap * 4 // 3 if half else cap * 3 // 2
        half = not half
    if limit and needed <= limit < cap:
        cap = limit
    return cap


class CompiledDecoder:
    """Decodes with a static cache and a compiled one-token forward (see the module doc).

    Args:
        model: The `PreTrainedModel`.
        backend: The `torch.compile` backend (`"inductor"`; `"eager"` for tests).
        cache_kw: The forward's keyword for the cache (`cache` or `past_key_values`).
    """

    def __init__(self, model: Any, backend: str, cache_kw: str) -> None:
        import torch

        _register()
        self.model = model
        self.backend = backend
        self.cache_kw = cache_kw
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        options: dict[str, Any] = {"fullgraph": True}
        if backend == "inductor" and self.cuda:
            options["mode"] = "reduce-overhead"
        self._step: Callable[..., Any] = torch.compile(model.forward, backend=backend, **options)
        self._static: Any = None
        self._pick: Callable[[Any, int], Any] = lambda logits, step: logits.argmax(-1)
        self._prefill_attention = ""
        self.cap = 0
        #: Why compiled decoding was turned off (a compile error), else `None`.
        self.disabled: str | None = None
        #: Static cache capacities allocated so far (each compiles once).
        self.shapes: list[int] = []

    def unsupported(self, params: dict[str, Any], position_ids: Any) -> str | None:
        """Why this call must use `generate`, or `None`."""
        if self.disabled:
            return self.disabled
        if position_ids is not None:
            return "position ids with gaps (keep-positions)"
        penalty = params.get("repetition_penalty")
        if penalty is not None and float(penalty) != 1.0:
            return "repetition_penalty"
        return None

    # -- the static cache -----------------------------------------------------------------
    def _fill_static(self, cache: Any, length: int, needed: int) -> Any:
        """Copy the `DynamicCache`'s `length` tokens into the static cache; return it."""
        from transformers import StaticCache

        layers = list(cache.layers)
        if self._static is None or self.cap < needed:
            limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
            self._static = None
            self.cap = capacity(needed, limit)
            self._static = StaticCache(config=self.model.config, max_cache_len=self.cap)
            if len(self._static.layers) != len(layers) or any(
                type(s).__name__ != "StaticLayer" for s in self._static.layers
            ):
                raise RuntimeError("the model's cache layers are not all full attention")
            for s, d in zip(self._static.layers, layers):
                s.lazy_initialization(d.keys, d.values)
            self.shapes.append(self.cap)
        for s, d in zip(self._static.layers, layers):
            s.keys[:, :, :length].copy_(d.keys)
            s.values[:, :, :length].copy_(d.values)
            s.cumulative_length.fill_(length)
        return self._static

    @staticmethod
    def _append(cache: Any, static: Any, start: int, count: int) -> None:
        """Append the static cache's slots `start .. start+count` to the `DynamicCache`."""
        if count <= 0:
            return
        for i, s in enumerate(static.layers):
            cache.update(
                s.keys[:, :, start : start + count].clone(),
                s.values[:, :, start : start + count].clone(),
                i,
            )

    # -- one generation -------------------------------------------------------------------
    def run(
        self,
        new_ids: list[int],
        cache: Any,
        length: int,
        *,
        max_new: int,
        eos: tuple[int, ...],
        pick: Callable[[Any, int], Any],
        emit: Callable[[int], None],
        stop: Callable[[list[int]], bool],
    ) -> list[int]:
        """Prefill `new_ids` into `cache` (which holds `length - len(new_ids)` tokens), then
        decode up to `max_new` tokens; return them (the last one's keys are not cached).

        `pick(logits, step)` turns the last logits into a `(1, 1)` token tensor; `emit`
        receives each token as the host reads it; `stop(tokens)` ends the reply early.
        """
        import torch

        dev, kw = self.device, self.cache_kw
        model = self.model
        out = model(
            input_ids=torch.tensor([new_ids], dtype=torch.long, device=dev),
            use_cache=True,
            logits_to_keep=1,
            **{kw: cache},
        )
        token = pick(out.logits[:, -1, :], 0)
        del out
        host = torch.empty(max_new, dtype=torch.long, pin_memory=self.cuda)
        ready: list[Any] = []

        def send(tok: Any, j: int) -> None:  # start copying token j to the host
            host[j : j + 1].copy_(tok.reshape(1), non_blocking=self.cuda)
            if self.cuda:
                event = torch.cuda.Event()
                event.record()
                ready.append(event)

        def read(j: int) -> int:
            if self.cuda:
                ready[j].synchronize()
            return int(host[j])

        send(token, 0)
        generated: list[int] = []
        static: Any = None
        fed = 0  # tokens whose keys and values the static cache holds past `length`
        eager = False
        self._pick = pick
        self._prefill_attention = prefill_attention = model.config._attn_implementation
        try:
            pending = token
            for j in range(max_new):
                nxt = None
                if j == 0:  # the first token reaches the consumer before any compiling
                    first = read(0)
                    generated.append(first)
                    emit(first)
                    if first in eos or stop(generated) or max_new == 1:
                        break
                if j + 1 < max_new:
                    if not eager and static is None:
                        static = self._fill_static(cache, length, length + max_new)
                    nxt, eager = self._launch(pending, length + j, j + 1, static, cache, fed, eager)
                    fed = j + 1
                    send(nxt, j + 1)
                if j > 0:
                    t = read(j)
                    generated.append(t)
                    emit(t)
                    if t in eos or stop(generated):
                        break
                if nxt is None:
                    break
                pending = nxt
        finally:
            model.config._attn_implementation = prefill_attention
        keep = len(generated) - 1  # generate never feeds back the last token
        if not eager and static is not None:
            self._append(cache, static, length, min(keep, fed))
        elif eager:
            self._crop(cache, length + keep)
        return generated

    def _launch(
        self, token: Any, slot: int, step: int, static: Any, cache: Any, fed: int, eager: bool
    ) -> tuple[Any, bool]:
        """Run one decode step for `token` at `slot`; return token number `step` and whether
        the loop is now eager (after a compile failure)."""
        import torch

        model, kw = self.model, self.cache_kw
        position = torch.full((1, 1), slot, dtype=torch.long, device=self.device)
        if not eager:
            model.config._attn_implementation = ATTENTION
            try:
                if self.cuda and self.backend == "inductor":
                    torch.compiler.cudagraph_mark_step_begin()
                out = self._step(
                    input_ids=token, position_ids=position, use_cache=True, **{kw: static}
                )
                return self._pick(out.logits[:, -1, :], step), False
            except Exception as exc:  # compiling failed: go on eagerly, and stop compiling
                self.disabled = f"compile failed: {type(exc).__name__}: {exc}"[:300]
                model.config._attn_implementation = self._prefill_attention
                self._append(cache, static, slot - fed, fed)
        out = model(input_ids=token, position_ids=position, use_cache=True, **{kw: cache})
        return self._pick(out.logits[:, -1, :], step), True

    @staticmethod
    def _crop(cache: Any, length: int) -> None:
        held = int(cache.get_seq_length())
        if held > length:
            cache.crop(length - held)
