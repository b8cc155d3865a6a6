"""The lean CPU decode loop: one-token forwards of a Llama-shaped model, without `generate`.

[`HFBackend`][fmai_torch.HFBackend] decodes with this on the CPU (`compile="auto"`): the
prompt's uncached suffix is prefilled by the model's own forward (exactly what `generate`
does), then every new token runs [`LeanDecoder.step`][fmai_torch.lean.LeanDecoder.step], a
plain loop over the decoder layers on the same cross-turn `DynamicCache`. It runs the very
operations of transformers' Llama forward in the same order (the same RMSNorm arithmetic,
the model's own rotary embedding, `apply_rotary_pos_emb`, the configured attention
function), so the numbers are bit for bit those of `generate`:
float32 stays token-identical, and cross-turn reuse on and off stay token-identical. What it
leaves out is the per-step machinery around the forward: `generate`'s input preparation,
logits processors, stopping criteria and streamer, the causal-mask construction, and the
module calls and keyword plumbing of every layer, and the cache's growth by `torch.cat`
(which copies every layer's whole cache at every step): for one turn each layer's keys and
values become views of buffers with room for the reply, and a step writes one slot.

In the int8 and int4 layouts ([`fmai_torch.quant`][fmai_torch.quant]) the query, key and
value projections of a layer run as one matrix product, and so do gate and up: the packed
weights are concatenated by rows. Every output row of these kernels is computed from its own
weight row only, so the fused product is bit for bit the concatenation of the separate ones;
the decoder checks this on the model's own shapes when it is built and does not fuse where
it is not (`LeanDecoder.fused` says which). One product instead of three (and two) saves the
per-call cost of the kernel and the bfloat16 conversions of its input.

Where every group is fused and every other product (`o_proj`, `down_proj`, `lm_head`) is
int8 or int4 too, a step runs the quantized path (`LeanDecoder.quantized`): the same
arithmetic in fewer calls, which matters most on two threads, where the products split over
the threads and the small operations between them do not. Each RMSNorm is written straight
into one bfloat16 buffer that the next product reads (the product's float32 result rounded
as it is stored, which is what the cast after it did; in float32 the norm is one
`torch.nn.functional.rms_norm` call where that is bit for bit the model's); the kernels are
called directly, without the module call and its reshapes; the rotary embedding turns the
query and key heads in one pass (`rotate_half(x) * sin` is `x` with its halves swapped times
`[-sin_1, sin_2]`, the same products); attention calls the CPU `sdpa` kernel that
`scaled_dot_product_attention` dispatches to; the residual adds of the MLP run in place. The
decoder checks this path when it is built: one step of it must give the model's own logits,
keys and values bit for bit, or the plain step runs.

Models other than a bias-free, full-attention Llama (and prompts with position gaps, or a
`repetition_penalty`) use `generate`; `Generation.extra["decode"]` says which loop ran.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["LeanDecoder", "lean_support"]


def lean_support(model: Any) -> str | None:
    """Why `model` cannot use the lean loop, or `None` when it can."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", "") != "llama":
        return "not a Llama model"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "biased projections"
    if int(getattr(config, "pretraining_tp", 1) or 1) != 1:
        return "pretraining_tp"
    if getattr(config, "hidden_act", "silu") != "silu":
        return "activation"
    inner = getattr(model, "model", None)
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(inner, name):
            return f"no model.{name}"
    if not hasattr(model, "lm_head"):
        return "no lm_head"
    return None


class _Fused:
    """Row-concatenated quantized projections; `split` are the output widths."""

    def __init__(self, layer: Any, split: list[int]) -> None:
        self.layer = layer
        self.split = split


def _fuse(parts: list[Any]) -> Any:
    """One quantized layer whose output is the concatenation of `parts`' outputs, or `None`."""
    import torch
    from fmai_torch.quant import Int4Linear, Int8Linear

    kinds = {type(p) for p in parts}
    if len(kinds) != 1 or len({p.in_features for p in parts}) != 1:
        return None
    kind = kinds.pop()
    inp, out = parts[0].in_features, sum(p.out_features for p in parts)
    if kind is Int8Linear:
        layer: Any = Int8Linear(inp, out, device="meta")
        layer.qweight = torch.cat([p.qweight for p in parts])
        layer.scales = torch.cat([p.scales for p in parts])
    elif kind is Int4Linear:
        layer = Int4Linear(inp, out, device="meta")
        layer.qweight = torch.cat([p.qweight for p in parts])
        layer.scales_and_zeros = torch.cat([p.scales_and_zeros for p in parts], dim=1)
    else:
        return None
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for rows in (1, 3):
            x = torch.randn(rows, inp, generator=gen)
            if not torch.equal(layer(x), torch.cat([p(x) for p in parts], dim=-1)):
                return None
    return _Fused(layer, [p.out_features for p in parts])


def _kernel(layer: Any) -> Callable[[Any], Any] | None:
    """`layer`'s matrix product on a bfloat16 `(rows, in)` input, bfloat16 out: the very call
    its `forward` makes, without the module call and the casts around it."""
    import torch
    from fmai_torch.quant import GROUP, Int4Linear, Int8Linear

    aten = torch.ops.aten
    if type(layer) is Int4Linear:
        int4, qw = aten._weight_int4pack_mm_for_cpu.default, layer.qweight
        sz = layer.scales_and_zeros
        return lambda x: int4(x, qw, GROUP, sz)
    if type(layer) is Int8Linear:
        int8, qw, sc = aten._weight_int8pack_mm.default, layer.qweight, layer.scales
        return lambda x: int8(x, qw, sc)
    return None


class _Buffers:
    """The working tensors of a quantized step (one set per dtype, reused by every layer
    and every step: one step at a time per decoder, as `HFBackend` runs them under its
    model's lock)."""

    def __init__(self, plan: _Quantized, like: Any) -> None:
        import torch

        dtype, device = like.dtype, like.device
        heads, kv, d, inter = plan.heads, plan.kv_heads, plan.head_dim, plan.inter
        rotated = (heads + kv) * d

        def new(*shape: int, dtype: Any = dtype) -> Any:
            return torch.empty(*shape, dtype=dtype, device=device)

        self.dtype, self.device = dtype, device
        self.sign = torch.tensor([[-1.0], [1.0]], dtype=dtype, device=device)
        xb, ab = new(1, like.shape[-1], dtype=torch.bfloat16), new(1, inter, dtype=torch.bfloat16)
        y = new(1, rotated + kv * d)
        x = y[0, :rotated].view(-1, 2, d // 2)
        v = y[0, rotated:].view(1, kv, 1, d)
        t1, t2, r = new(*x.shape), new(*x.shape), new(*x.shape)
        q, k = r[:heads].view(1, heads, 1, d), r[heads:].view(1, kv, 1, d)
        gu = new(1, 2 * inter)
        #: xb, ab (bfloat16 inputs of the products), y and its views x (query and key
        #: heads as halves) and v, t1, t2, r (the rotary embedding) and r's views q and k,
        #: gu and its halves g and u.
        self.all = (xb, ab, y, x, v, t1, t2, r, q, k, gu, gu[:, :inter], gu[:, inter:])


class _Quantized:
    """What [`LeanDecoder.step`][fmai_torch.lean.LeanDecoder.step]'s quantized path needs of
    a model whose projections are all int8/int4 and fused (see `LeanDecoder._quantized`)."""

    def __init__(
        self,
        layers: list[tuple[Any, ...]],
        head: Callable[[Any], Any],
        dims: tuple[int, ...],
        eps: float,
        norm: Callable[[Any, Any, float, Any], None],
    ) -> None:
        self.layers = layers
        self.head = head
        self.heads, self.kv_heads, self.head_dim, self.inter = dims
        self.eps = eps
        self.norm = norm
        #: Whether the check ran with `sdpa` attention: then the steps call its CPU kernel
        #: directly while the model's attention stays `sdpa`.
        self.flash = False
        self._buffers: _Buffers | None = None

    def buffers(self, like: Any) -> _Buffers:
        """The working tensors for hidden states like `like` (kept between steps)."""
        b = self._buffers
        if b is None or b.dtype != like.dtype or b.device != like.device:
            b = self._buffers = _Buffers(self, like)
        return b


def _norm_into(h: Any, weight: Any, eps: float, out: Any) -> None:
    """`LlamaRMSNorm.forward(h)` written into `out` (bfloat16): the same operations, the
    product cast to `out`'s dtype as it is stored (as `.to(torch.bfloat16)` would after)."""
    import torch

    x = h if h.dtype == torch.float32 else h.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    normed = x * variance.add_(eps).rsqrt_()
    torch.mul(weight, normed if h.dtype == torch.float32 else normed.to(h.dtype), out=out)


def _rms_norm_into(h: Any, weight: Any, eps: float, out: Any) -> None:
    """`_norm_into` through `torch.nn.functional.rms_norm` (float32 only; see `_norm_choice`)."""
    import torch

    out.copy_(torch.nn.functional.rms_norm(h, (h.shape[-1],), weight, eps))


def _norm_choice(norm: Any) -> Callable[[Any, Any, float, Any], None]:
    """`_rms_norm_into` (one call) where it gives `LlamaRMSNorm`'s result bit for bit on
    random rows of the model's width and dtype, else `_norm_into`."""
    import torch

    weight = norm.weight
    if weight.dtype != torch.float32 or not hasattr(torch.nn.functional, "rms_norm"):
        return _norm_into
    gen = torch.Generator().manual_seed(0)
    eps = float(norm.variance_epsilon)
    with torch.inference_mode():
        for scale in (1e-3, 1.0, 30.0):
            h = (torch.randn(1, weight.shape[-1], generator=gen) * scale).to(weight.device)
            a = torch.empty(1, h.shape[-1], dtype=torch.bfloat16, device=h.device)
            b = torch.empty_like(a)
            _norm_into(h, weight, eps, a)
            _rms_norm_into(h, weight, eps, b)
            if not torch.equal(a, b) or not torch.equal(norm(h).to(torch.bfloat16), a):
                return _norm_into
    return _rms_norm_into


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # Linux


def _into_huge_pages(modules: list[Any]) -> bool:
    """Move the weight buffers of `modules` (int8/int4 layers, in the order a step reads
    them) into one block of memory that Linux backs with 2 MiB pages where it can
    (`madvise(MADV_HUGEPAGE)`; transparent huge pages in `madvise` mode). A step streams
    every weight once, ~95 MB for the embedded model in int4, and with 4 KiB pages that is
    some 23,000 page-table walks per token. The values and the kernels are unchanged, so
    the results are too. Returns whether the memory was advised (`False`: not Linux, no
    libc, nothing to move, or the call failed; the buffers stay where they were).
    """
    import ctypes
    import sys

    import torch

    if not modules or not sys.platform.startswith("linux"):
        return False
    names = [
        (m, name)
        for m in modules
        for name in ("qweight", "scales_and_zeros" if hasattr(m, "scales_and_zeros") else "scales")
    ]
    tensors = [getattr(m, name) for m, name in names]
    if any(t.device.type != "cpu" for t in tensors):
        return False
    sizes = [-(-t.numel() * t.element_size() // 4096) * 4096 for t in tensors]
    length = -(-sum(sizes) // _HUGE_PAGE) * _HUGE_PAGE
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        block = torch.empty(length + _HUGE_PAGE, dtype=torch.uint8)  # untouched: not faulted in
        start = -block.data_ptr() % _HUGE_PAGE
        if libc.madvise(block.data_ptr() + start, length, _MADV_HUGEPAGE) != 0:
            return False
    except (OSError, AttributeError):
        return False
    at = start
    with torch.no_grad():
        for (module, name), t, size in zip(names, tensors, sizes, strict=True):
            n = t.numel() * t.element_size()
            view = block[at : at + n].view(t.dtype).view(t.shape)
            view.copy_(t)
            setattr(module, name, view)
            at += size
    return True


class LeanDecoder:
    """Decodes one token at a time over a `DynamicCache` (see the module doc).

    Args:
        model: A Llama `PreTrainedModel` ([`lean_support`][fmai_torch.lean.lean_support]).
        cache_kw: The forward's keyword for the cache (`cache` or `past_key_values`).
        quantized: Run the quantized step where it applies (`False`: always the plain one;
            both give the same logits, `benchmarks/lean_step.py` times them).
        huge_pages: With the quantized step, move its weights into memory advised for
            huge pages.
    """

    def __init__(
        self, model: Any, cache_kw: str, *, quantized: bool = True, huge_pages: bool = True
    ) -> None:
        from transformers.models.llama import modeling_llama

        self.model = model
        self.cache_kw = cache_kw
        self.device = next(model.parameters()).device
        self._rope = modeling_llama.apply_rotary_pos_emb
        self._eager = modeling_llama.eager_attention_forward
        inner = model.model
        self.layers: list[tuple[Any, ...]] = []
        fused = 0
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up = _fuse([mlp.gate_proj, mlp.up_proj])
            fused += (qkv is not None) + (gate_up is not None)
            self.layers.append((layer, attn, mlp, qkv, gate_up))
        #: How many projection groups run fused (two per layer at most).
        self.fused = fused
        #: Why the lean loop was turned off (an error in a step), else `None`.
        self.disabled: str | None = None
        self._room: list[tuple[Any, Any]] | None = None
        #: Whether steps run the quantized path (see `_quantized`).
        self.quantized = False
        #: Whether its weights were moved into memory advised for huge pages.
        self.huge_pages = False
        self._huge = huge_pages
        self._q: _Quantized | None = self._quantized() if quantized else None
        self.quantized = self._q is not None

    def _quantized(self) -> _Quantized | None:
        """The plan of the quantized step, or `None` where it does not apply.

        It applies where every layer's query/key/value and gate/up products are fused, the
        other projections and `lm_head` are int8 or int4, and the norms are `LlamaRMSNorm`;
        it is then checked on the model itself: one step of it must give the logits, keys and
        values of the model's own forward bit for bit, or it is not used.
        """
        from transformers.models.llama import modeling_llama

        model = self.model
        inner = model.model
        if self._huge:
            self.huge_pages = _into_huge_pages(self._step_modules())
        head = _kernel(model.lm_head)
        norms = [inner.norm]
        layers: list[tuple[Any, ...]] = []
        dims: set[tuple[int, ...]] = set()
        for layer, attn, mlp, qkv, gate_up in self.layers:
            o, down = _kernel(attn.o_proj), _kernel(mlp.down_proj)
            if qkv is None or gate_up is None or o is None or down is None or head is None:
                return None
            ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
            norms += [ln1, ln2]
            d = int(attn.head_dim)
            q_width, kv_width, v_width = qkv.split
            if kv_width != v_width or q_width % d or kv_width % d or d % 2:
                return None
            dims.add((q_width // d, kv_width // d, d, gate_up.split[0]))
            layers.append(
                (
                    ln1.weight,
                    float(ln1.variance_epsilon),
                    _kernel(qkv.layer),
                    o,
                    ln2.weight,
                    float(ln2.variance_epsilon),
                    _kernel(gate_up.layer),
                    down,
                    float(attn.scaling),
                    attn,
                )
            )
        if len(dims) != 1 or gate_up is None or gate_up.split[0] != gate_up.split[1]:
            return None
        if any(type(n) is not modeling_llama.LlamaRMSNorm for n in norms):
            return None
        assert head is not None
        eps = float(inner.norm.variance_epsilon)
        plan = _Quantized(layers, head, dims.pop(), eps, _norm_choice(inner.norm))
        return plan if self._check(plan) else None

    def _step_modules(self) -> list[Any]:
        """The quantized layers a quantized step reads, in the order it reads them (none
        where a projection is not int8/int4 or a group is not fused)."""
        from fmai_torch.quant import Int4Linear, Int8Linear

        order: list[Any] = []
        for _, attn, mlp, qkv, gate_up in self.layers:
            if qkv is None or gate_up is None:
                return []
            order += [qkv.layer, attn.o_proj, gate_up.layer, mlp.down_proj]
        order.append(self.model.lm_head)
        return order if all(type(m) in (Int4Linear, Int8Linear) for m in order) else []

    def _check(self, plan: _Quantized) -> bool:
        """Whether a quantized step equals the model's forward on a short prompt, bit for bit."""
        from transformers import DynamicCache

        import torch

        ids = torch.arange(1, 4, device=self.device)[None]
        token = torch.tensor([[4]], device=self.device)
        kw = self.cache_kw
        plan.flash = self.model.config._attn_implementation == "sdpa"
        try:
            with torch.inference_mode():
                ours: Any = DynamicCache()
                theirs: Any = DynamicCache()
                for cache in (ours, theirs):
                    self.model(input_ids=ids, **{kw: cache})
                got = self._step_quantized(plan, token, ids.shape[1], ours)
                want = self.model(input_ids=token, **{kw: theirs}).logits[:, -1, :]
                same = torch.equal(got, want)
                for a, b in zip(ours.layers, theirs.layers, strict=True):
                    same = same and torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        except Exception:  # a model this path does not fit: the generic step runs
            return False
        return bool(same)

    def begin(self, cache: Any, room: int) -> None:
        """Give every layer of `cache` room for `room` more tokens: its keys and values move
        into buffers of that length and become views of them, so a step writes one slot
        instead of `torch.cat` copying the whole cache (as `DynamicLayer.update` does)."""
        self._room = []
        for layer in cache.layers:
            keys, values = layer.keys, layer.values
            b, h, n, d = keys.shape
            kbuf = keys.new_empty(b, h, n + room, d)
            vbuf = values.new_empty(b, h, n + room, values.shape[-1])
            kbuf[:, :, :n].copy_(keys)
            vbuf[:, :, :n].copy_(values)
            layer.keys, layer.values = kbuf[:, :, :n], vbuf[:, :, :n]
            self._room.append((kbuf, vbuf))

    def finish(self, cache: Any) -> None:
        """End [`begin`][fmai_torch.lean.LeanDecoder.begin]: every layer holds its own
        contiguous keys and values again (the buffers' spare room is freed)."""
        if self._room is None:
            return
        self._room = None
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.contiguous(), layer.values.contiguous()

    def _update(self, cache: Any, i: int, k: Any, v: Any) -> tuple[Any, Any]:
        if self._room is None:
            keys, values = cache.update(k, v, i)
            return keys, values
        layer = cache.layers[i]
        kbuf, vbuf = self._room[i]
        n = layer.keys.shape[-2]
        kbuf.narrow(2, n, 1).copy_(k)
        vbuf.narrow(2, n, 1).copy_(v)
        layer.keys, layer.values = keys, values = kbuf.narrow(2, 0, n + 1), vbuf.narrow(2, 0, n + 1)
        return keys, values

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

    @staticmethod
    def _norm(module: Any, x: Any) -> Any:
        """`LlamaRMSNorm.forward`, the same operations."""
        import torch

        dtype = x.dtype
        h = x.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + module.variance_epsilon)
        return module.weight * h.to(dtype)

    def _step_quantized(self, plan: _Quantized, token: Any, position: int, cache: Any) -> Any:
        """[`step`][fmai_torch.lean.LeanDecoder.step] for the int8/int4 layouts: the same
        arithmetic in fewer operations (see the module doc)."""
        import torch

        model = self.model
        inner = model.model
        h = inner.embed_tokens(token)
        positions = torch.full((1, 1), position, dtype=torch.long, device=self.device)
        cos, sin = inner.rotary_emb(h, positions)
        h = h.view(1, -1)
        b = plan.buffers(h)
        half = plan.head_dim // 2
        # rotate_half(x) * sin == swap(x) * [-sin_1, sin_2], x's two halves swapped
        c = cos.view(2, half)
        s = sin.view(2, half) * b.sign
        xb, ab, y, x, v, t1, t2, r, q, k, gu, g, u = b.all
        sdpa = plan.flash and model.config._attn_implementation == "sdpa"
        attention = None if sdpa else self._attention()
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
        norm, silu, mul, add = plan.norm, torch.nn.functional.silu, torch.mul, torch.add
        room, layers = self._room, cache.layers
        n = layers[0].keys.shape[-2] if room is not None else 0
        for i, (w1, e1, qkv, o, w2, e2, gate_up, down, scaling, attn) in enumerate(plan.layers):
            norm(h, w1, e1, xb)
            y.copy_(qkv(xb))  # in the model's dtype, as the projections hand it back
            mul(x, c, out=t1)
            mul(x.flip(1), s, out=t2)
            add(t1, t2, out=r)
            if room is None:
                keys, values = cache.update(k.clone(), v.clone(), i)
            else:
                layer, (kbuf, vbuf) = layers[i], room[i]
                kbuf.narrow(2, n, 1).copy_(k)
                vbuf.narrow(2, n, 1).copy_(v)
                keys, values = kbuf.narrow(2, 0, n + 1), vbuf.narrow(2, 0, n + 1)
                layer.keys, layer.values = keys, values
            if attention is None:
                out = flash(q, keys, values, 0.0, False, attn_mask=None, scale=scaling)[0]
            else:
                out, _ = attention(attn, q, keys, values, None, dropout=0.0, scaling=scaling)
            xb.copy_(out.view(xb.shape))
            h = h + o(xb)
            norm(h, w2, e2, xb)
            gu.copy_(gate_up(xb))
            mul(silu(g, inplace=True), u, out=ab)
            h.add_(down(ab))
        norm(h, inner.norm.weight, plan.eps, xb)
        return plan.head(xb).to(h.dtype)

    def _attention(self) -> Any:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS.get_interface(
            self.model.config._attn_implementation, self._eager
        )

    def step(self, token: Any, position: int, cache: Any) -> Any:
        """The logits `(1, vocab)` after `token` (`(1, 1)` ids) at `position`; its keys and
        values are appended to `cache`."""
        import torch

        if self._q is not None:
            return self._step_quantized(self._q, token, position, cache)
        model = self.model
        inner = model.model
        attention = self._attention()
        h = inner.embed_tokens(token)
        positions = torch.full((1, 1), position, dtype=torch.long, device=self.device)
        cos, sin = inner.rotary_emb(h, positions)
        norm, rope, act = self._norm, self._rope, torch.nn.functional.silu
        for i, (layer, attn, mlp, qkv, gate_up) in enumerate(self.layers):
            residual = h
            x = norm(layer.input_layernorm, h)
            d = attn.head_dim
            if qkv is not None:
                q, k, v = qkv.layer(x).split(qkv.split, dim=-1)
            else:
                q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            q = q.view(1, 1, -1, d).transpose(1, 2)
            k = k.view(1, 1, -1, d).transpose(1, 2)
            v = v.view(1, 1, -1, d).transpose(1, 2)
            q, k = rope(q, k, cos, sin)
            k, v = self._update(cache, i, k, v)
            out, _ = attention(attn, q, k, v, None, dropout=0.0, scaling=attn.scaling)
            out = out.reshape(1, 1, -1).contiguous()
            h = residual + attn.o_proj(out)
            residual = h
            x = norm(layer.post_attention_layernorm, h)
            if gate_up is not None:
                g, u = gate_up.layer(x).split(gate_up.split, dim=-1)
            else:
                g, u = mlp.gate_proj(x), mlp.up_proj(x)
            h = residual + mlp.down_proj(act(g) * u)
        h = norm(inner.norm, h)
        return model.lm_head(h)[:, -1, :]

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
        decode up to `max_new` tokens; return them (the last one's keys are not cached, as
        with `generate`).

        `pick(logits, step)` turns logits into a `(1, 1)` token tensor; `emit` receives each
        token; `stop(tokens)` ends the reply early.
        """
        import torch

        out = self.model(
            input_ids=torch.tensor([new_ids], dtype=torch.long, device=self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: cache},
        )
        token = pick(out.logits[:, -1, :], 0)
        del out
        generated: list[int] = []
        try:
            for j in range(max_new):
                t = int(token)
                generated.append(t)
                emit(t)
                if t in eos or stop(generated) or j + 1 == max_new:
                    break
                if j == 0:  # after the first token is out: the copy is not in its latency
                    self.begin(cache, max_new - 1)
                token = pick(self.step(token.reshape(1, 1), length + j, cache), j + 1)
        finally:
            self.finish(cache)
        return generated
