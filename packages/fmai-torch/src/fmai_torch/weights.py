"""Weight formats (`fp32`, `bf16`, `int8`, `int4`) and thread counts, chosen by measurement.

`HFBackend(weights=...)` takes one of [`WEIGHTS`][fmai_torch.weights.WEIGHTS]. `"auto"` picks:

- a model passed in already loaded: left as it is;
- an explicit `dtype=`: that dtype, not quantized;
- CUDA or MPS: the device's half type (bfloat16 on CUDA, float16 on MPS), as before;
- the CPU, for a GGUF source (the embedded model, a `.gguf` file): the fastest of `fp32`,
  `int8` and `int4` (where torch has the CPU int4 kernels) on a probe of one decode step's
  matrix products with the model's own shapes (from its `config.json`: every projection of
  every layer, and the head), as the decode loop runs them (query/key/value and gate/up
  fused into one product each in the int8 and int4 layouts, see
  [`fmai_torch.lean`][fmai_torch.lean]), on one thread. The modes are timed in turn, five
  rounds, best of each, so a burst of load elsewhere does not decide. Within 5 % of the
  fastest the order of preference is `int4` (the file's own Q4_1 blocks: nothing lost
  against the file), `fp32` (the file dequantized exactly), `int8` (re-quantized: a small
  error of its own). The timings are kept in
  [`LAST_PROBE`][fmai_torch.weights.LAST_PROBE];
- the CPU, for a hub id or a folder: `fp32` (quantizing such a model is opt-in).

`threads="auto"` times the same probe (in the chosen mode) at 1, 2, 4 ... up to the cores
this process may run on (`os.sched_getaffinity`), and takes the fastest count (the smaller
one within 10 %). The count is set only while the backend runs a forward pass, and
restored after.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from typing import Any

from fmai_core.errors import ConfigurationError

__all__ = [
    "LAST_PROBE",
    "WEIGHTS",
    "available_cores",
    "choose_threads",
    "choose_weights",
    "decode_shapes",
    "use_threads",
]

WEIGHTS = ("auto", "fp32", "bf16", "int8", "int4")

#: `(out, in, count)` products of one decode step: a generic model's, when the config is unknown.
_GENERIC: tuple[tuple[int, int, int], ...] = ((4096, 1024, 1),)

#: The seconds per decode step's products of each mode that `auto` measured last.
LAST_PROBE: dict[str, float] = {}


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def use_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `torch.set_num_threads(threads)`, restoring the count after."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if before != threads:
            torch.set_num_threads(before)


def decode_shapes(config: dict[str, Any], fused: bool) -> tuple[tuple[int, int, int], ...]:
    """The `(out, in, count)` matrix products of one decode step of a Llama-shaped `config`.

    `fused`: query/key/value as one product and gate/up as one (how the decode loop runs the
    int8 and int4 layouts). The head counts once, as `(vocab, hidden)`.
    """
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    dim = int(config.get("head_dim") or hidden // heads)
    inter, layers = int(config["intermediate_size"]), int(config["num_hidden_layers"])
    if fused:
        per = [((heads + 2 * kv) * dim, hidden), (hidden, heads * dim), (2 * inter, hidden)]
    else:
        per = [(heads * dim, hidden), (kv * dim, hidden), (kv * dim, hidden)]
        per += [(hidden, heads * dim), (inter, hidden), (inter, hidden)]
    per.append((hidden, inter))
    counts: dict[tuple[int, int], int] = {}
    for shape in per:
        counts[shape] = counts.get(shape, 0) + layers
    head = (int(config["vocab_size"]), hidden)
    counts[head] = counts.get(head, 0) + 1
    return tuple((o, i, n) for (o, i), n in counts.items())


def _layer(mode: str, weight: Any, head: bool) -> Any:
    import torch
    from fmai_torch.quant import Int4Linear, Int8Linear, int4_fits

    if mode == "int4" and not head and int4_fits(*weight.shape):
        return Int4Linear.from_float(weight)
    if mode in ("int8", "int4"):  # int4 mode keeps the head (and odd shapes) in int8
        return Int8Linear.from_float(weight)
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data = weight
    return layer


def _probe(
    modes: tuple[str, ...], shapes: tuple[tuple[int, int, int], ...], rounds: int = 5
) -> dict[str, float]:
    """Seconds per decode step's products (one row each) in each mode, the modes in turn."""
    import torch

    gen = torch.Generator().manual_seed(0)
    head = max(shapes, key=lambda s: s[0] * s[1] * (s[2] == 1))
    cases = []
    for out, inp, count in shapes:
        weight = torch.randn(out, inp, generator=gen) / inp**0.5
        x = torch.randn(1, inp, generator=gen)
        cases.append(({m: _layer(m, weight, (out, inp, count) == head) for m in modes}, x, count))
    best = dict.fromkeys(modes, float("inf"))
    with torch.inference_mode():
        for layers, x, _ in cases:  # warm every kernel once
            for layer in layers.values():
                layer(x)
        for _ in range(rounds):
            for mode in modes:
                total = 0.0
                for layers, x, count in cases:
                    reps = min(count, 8)
                    start = time.perf_counter()
                    for _ in range(reps):
                        layers[mode](x)
                    total += (time.perf_counter() - start) / reps * count
                best[mode] = min(best[mode], total)
    return best


_PREFERENCE = ("int4", "fp32", "int8")


@functools.lru_cache(maxsize=8)
def _fastest(shapes: tuple[tuple[int, int, int], ...]) -> str:
    from fmai_torch.quant import int4_available

    modes = ("fp32", "int8", "int4") if int4_available() else ("fp32", "int8")
    with use_threads(1):  # the ranking of the layouts; the thread count is chosen after
        try:
            timings = _probe(modes, shapes)
        except RuntimeError:  # a CPU or build without the kernels: measure what runs
            timings = _probe(("fp32",), shapes)
    LAST_PROBE.clear()
    LAST_PROBE.update(timings)
    fastest = min(timings.values())
    return next(m for m in _PREFERENCE if timings.get(m, float("inf")) <= fastest * 1.05)


def choose_weights(
    weights: str,
    *,
    device: Any,
    dtype: str | Any,
    gguf: bool,
    config: dict[str, Any] | None = None,
) -> str:
    """Resolve `weights` (see the module docstring) for a model about to load on `device`.

    `config`: the model's `config.json` (for the probe's shapes), if known.
    """
    if weights not in WEIGHTS:
        raise ConfigurationError(f"Unknown weights {weights!r}: use one of {', '.join(WEIGHTS)}.")
    if device.type != "cpu" and weights in ("int8", "int4"):
        raise ConfigurationError(
            f"weights={weights!r} runs on the CPU only (torch's weight-only CPU kernels); "
            f"on {device.type} use 'bf16' or 'auto'."
        )
    if weights != "auto":
        return weights
    if dtype != "auto" or device.type != "cpu":
        return "dtype"
    if not gguf:
        return "fp32"
    return _fastest(_shapes(config, fused=True))


def _shapes(config: dict[str, Any] | None, fused: bool) -> tuple[tuple[int, int, int], ...]:
    try:
        return decode_shapes(config, fused) if config else _GENERIC
    except (KeyError, TypeError, ValueError):
        return _GENERIC


def choose_threads(
    threads: int | str | None, mode: str, config: dict[str, Any] | None = None
) -> int:
    """The thread count for `threads` (`"auto"` measures; a number is capped at the cores)."""
    cores = available_cores()
    if threads is not None and threads != "auto":
        count = int(threads)
        if count < 1:
            raise ConfigurationError(f"threads must be at least 1, not {threads!r}.")
        return min(count, cores)
    probe = mode if mode in ("int8", "int4") else "fp32"
    return _measured_threads(cores, probe, _shapes(config, fused=probe != "fp32"))


@functools.lru_cache(maxsize=4)
def _measured_threads(cores: int, mode: str, shapes: tuple[tuple[int, int, int], ...]) -> int:
    counts = sorted({1, cores} | {c for c in (2, 4, 8, 16) if c < cores})
    timings: dict[int, float] = {}
    for count in counts:
        with use_threads(count):
            timings[count] = _probe((mode,), shapes, rounds=3)[mode]
    best = min(timings.values())
    return min(c for c, t in timings.items() if t <= best * 1.1)
