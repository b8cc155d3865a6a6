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


class LeanDecoder:
    """Decodes one token at a time over a `DynamicCache` (see the module doc).

    Args:
        model: A Llama `PreTrainedModel` ([`lean_support`][fmai_torch.lean.lean_support]).
        cache_kw: The forward's keyword for the cache (`cache` or `past_key_values`).
    """

    def __init__(self, model: Any, cache_kw: str) -> None:
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
        kbuf[:, :, n : n + 1].copy_(k)
        vbuf[:, :, n : n + 1].copy_(v)
        layer.keys, layer.values = kbuf[:, :, : n + 1], vbuf[:, :, : n + 1]
        return layer.keys, layer.values

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

    def step(self, token: Any, position: int, cache: Any) -> Any:
        """The logits `(1, vocab)` after `token` (`(1, 1)` ids) at `position`; its keys and
        values are appended to `cache`."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        import torch

        model = self.model
        inner = model.model
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            model.config._attn_implementation, self._eager
        )
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
        self.begin(cache, max_new - 1)
        try:
            for j in range(max_new):
                t = int(token)
                generated.append(t)
                emit(t)
                if t in eos or stop(generated) or j + 1 == max_new:
                    break
                token = pick(self.step(token.reshape(1, 1), length + j, cache), j + 1)
        finally:
            self.finish(cache)
        return generated
