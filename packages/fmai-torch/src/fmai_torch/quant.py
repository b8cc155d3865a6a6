"""Weight-only int4 and int8 linear layers for CPU decoding, and the GGUF Q4_1 unpacking.

Decoding one token reads every weight once, so on a CPU its speed is the memory bandwidth
divided by the bytes of the weights. [`Int4Linear`][fmai_torch.quant.Int4Linear] keeps a
projection in torch's packed int4 format (`aten._weight_int4pack_mm_for_cpu`, groups of 32
along the input, a bfloat16 scale and zero per group); [`Int8Linear`][fmai_torch.quant.Int8Linear]
keeps int8 with one scale per output channel (`aten._weight_int8pack_mm`). Both run their
matrix product with bfloat16 activations (torch's fast CPU path; with float32 activations the
same kernels are 10-30x slower) and hand back the model's own dtype, so norms, attention and
the residual stream stay as they were.

GGUF Q4_1 stores blocks of 32 values as `value = d * q + m` (`d`, `m` float16, `q` in 0..15).
torch's int4 format computes `(q - 8) * scale + zero`, so `scale = d` and `zero = m + 8 d`
reproduce the block exactly up to rounding `d` and `zero` to bfloat16: the per-element error
is at most `2**-8 * (8 |d| + |m + 8 d|)`, measured below 0.2 % of a block's range on the
embedded model (see `docs/kv-cache.md`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

__all__ = [
    "GROUP",
    "Int4Linear",
    "Int8Linear",
    "int4_available",
    "quantize_linears",
    "unpack_q4_1",
]

GROUP = 32
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def int4_available() -> bool:
    """Whether the installed torch has the CPU int4 kernels (torch 2.5 and later)."""
    return hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def int4_fits(out_features: int, in_features: int) -> bool:
    """The CPU int4 packing needs rows in multiples of 16 and whole groups of 32."""
    return out_features % 16 == 0 and in_features % GROUP == 0


def _flat(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    return x.reshape(-1, x.shape[-1]).to(torch.bfloat16), tuple(x.shape[:-1])


class Int4Linear(nn.Module):
    """A bias-free linear layer with int4 weights in groups of 32 (asymmetric).

    Buffers: `qweight` (torch's packed CPU layout, uint8 `[out, in / 2]`) and
    `scales_and_zeros` (bfloat16 `[in / 32, out, 2]`). The packed layout depends on the torch
    version and the CPU, so caches of it are keyed by both.
    """

    qweight: torch.Tensor
    scales_and_zeros: torch.Tensor

    def __init__(self, in_features: int, out_features: int, device: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device)
        )
        self.register_buffer(
            "scales_and_zeros",
            torch.empty(in_features // GROUP, out_features, 2, dtype=torch.bfloat16, device=device),
        )

    @classmethod
    def from_blocks(cls, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> Int4Linear:
        """From GGUF Q4_1 blocks: `q` int `[out, in]` (0..15), `d` and `m` `[out, in / 32]`."""
        out_features, in_features = q.shape
        layer = cls(in_features, out_features, device="meta")
        d32, m32 = d.to(torch.float32), m.to(torch.float32)
        zero = m32 + 8 * d32
        layer.qweight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.to(torch.int32).contiguous(), 1
        )
        layer.scales_and_zeros = (
            torch.stack([d32.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
        )
        return layer

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int4Linear:
        """Quantize a float `[out, in]` weight as Q4_1 does: `d = range / 15`, `m = min`."""
        w = weight.detach().to(torch.float32)
        groups = w.reshape(w.shape[0], -1, GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        d = (high - low) / 15
        safe = torch.where(d > 0, d, torch.ones_like(d))
        q = ((groups - low[..., None]) / safe[..., None]).round().clamp(0, 15)
        return cls.from_blocks(q.reshape(w.shape).to(torch.int32), d, low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, lead = _flat(x)
        y: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.qweight, GROUP, self.scales_and_zeros
        )
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by (float32 `[out, in]`, through bfloat16 output)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return self.forward(eye).to(torch.float32).t().contiguous()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 g{GROUP}"


class Int8Linear(nn.Module):
    """A bias-free linear layer with int8 weights and one bfloat16 scale per output channel."""

    qweight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, in_features: int, out_features: int, device: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer(
            "scales", torch.empty(out_features, dtype=torch.bfloat16, device=device)
        )

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Linear:
        """Symmetric per-channel quantization: `scale = max |w| / 127`, `q = round(w / scale)`."""
        with torch.no_grad():
            w = weight.detach().to(torch.float32)
            low, high = torch.aminmax(w, dim=-1)
            scale = (torch.maximum(-low, high) / 127).to(torch.bfloat16).to(torch.float32)
            inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
            q = torch.mul(w, inverse[:, None]).round_().clamp_(-127, 127).to(torch.int8)
        layer = cls(w.shape[1], w.shape[0], device="meta")
        layer.qweight = q.contiguous()
        layer.scales = scale.to(torch.bfloat16)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, lead = _flat(x)
        y: torch.Tensor = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def unpack_q4_1(raw: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split GGUF Q4_1 rows (uint8 `[rows, blocks * 20]`) into `q`, `d` and `m`.

    Each 20-byte block is `d` (float16), `m` (float16) and 16 bytes of nibbles: the low
    nibbles are values 0..15 of the block, the high nibbles values 16..31.

    Returns:
        `q` uint8 `[rows, blocks * 32]`, `d` and `m` float16 `[rows, blocks]`.
    """
    import numpy as np

    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(rows, -1, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0]
    nibbles = blocks[..., 4:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).reshape(rows, -1)
    return torch.from_numpy(q), torch.from_numpy(d.copy()), torch.from_numpy(m.copy())


def _bias_free(linear: nn.Linear) -> bool:
    # torch annotates `Linear.bias` as a Parameter, yet `bias=False` registers it as None
    return cast("torch.Tensor | None", linear.bias) is None


def _targets(model: Any, lm_head: bool) -> list[tuple[Any, str, Any]]:
    found = []
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.Linear) and _bias_free(child) and name in _PROJECTIONS:
                found.append((module, name, child))
    head = getattr(model, "lm_head", None)
    if lm_head and isinstance(head, nn.Linear) and _bias_free(head):
        found.append((model, "lm_head", head))
    return found


def quantize_linears(model: Any, mode: str) -> int:
    """Replace the projections (and `lm_head`) of `model` by int4 or int8 layers, in place.

    `mode="int4"` uses int4 where the shape allows it and int8 elsewhere (always for
    `lm_head`, whose rows are the vocabulary: int8 keeps it close to the embedding it is
    tied to). `mode="int8"` uses int8 throughout. A tied `lm_head` is untied: the embedding
    keeps its float weight. Returns the number of layers replaced.
    """
    replaced = 0
    for parent, name, linear in _targets(model, lm_head=True):
        w = linear.weight
        if mode == "int4" and name != "lm_head" and int4_fits(*w.shape):
            new: nn.Module = Int4Linear.from_float(w)
        else:
            new = Int8Linear.from_float(w)
        setattr(parent, name, new)
        replaced += 1
    if replaced and getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    return replaced
