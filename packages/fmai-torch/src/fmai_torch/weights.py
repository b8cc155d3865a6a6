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
  [`fmai_torch.lean`][fmai_torch.lean]), on one thread, each product with weights of its
  own so that a step streams the model's bytes from memory. The modes are timed in turn,
  three rounds, best of each, so a burst of load elsewhere does not decide. Within 5 % of the
  fastest the order of preference is `int4` (the file's own Q4_1 blocks: nothing lost
  against the file), `fp32` (the file dequantized exactly), `int8` (re-quantized: a small
  error of its own). The timings are kept in
  [`LAST_PROBE`][fmai_torch.weights.LAST_PROBE] and remembered in `probes.json` in fmai's
  cache, keyed by the CPU model, torch's CPU capability and version, the cores and the
  model's shapes, so a start pays the probe (seconds) once per device; `FMAI_REPROBE=1`
  measures again;
- the CPU, for a hub id or a folder: `fp32` (quantizing such a model is opt-in).

`threads="auto"` times the same probe (in the chosen mode) at 1, 2, 4 ... up to the cores
this process may run on (`os.sched_getaffinity`), and takes the fastest count (the smaller
one within 10 %), remembered the same way. The count is set only while the backend runs a
forward pass, and restored after.
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


def _layer(mode: str, out: int, inp: int, head: bool, gen: Any) -> Any:
    """A layer of `mode`'s layout with random weights (made directly in the packed form)."""
    import torch
    from fmai_torch.quant import Int4Linear, Int8Linear, int4_fits

    if mode == "int4" and not head and int4_fits(out, inp):
        q = torch.randint(0, 16, (out, inp), dtype=torch.int32, generator=gen)
        d = torch.rand(out, inp // 32, generator=gen) * 0.01
        return Int4Linear.from_blocks(q, d, -8 * d)
    if mode in ("int8", "int4"):  # int4 mode keeps the head (and odd shapes) in int8
        layer = Int8Linear(inp, out, device="meta")
        layer.qweight = torch.randint(-127, 128, (out, inp), dtype=torch.int8, generator=gen)
        layer.scales = torch.full((out,), 0.01, dtype=torch.bfloat16)
        return layer
    linear = torch.nn.Linear(inp, out, bias=False, device="meta")
    linear.weight = torch.nn.Parameter(torch.rand(out, inp, generator=gen) - 0.5)
    return linear


def _probe(
    modes: tuple[str, ...], shapes: tuple[tuple[int, int, int], ...], rounds: int = 3
) -> dict[str, float]:
    """Seconds per decode step's products (one row each) in each mode, the modes in turn.

    Every product of the step has weights of its own (`count` layers per shape, as in the
    model), so one step streams the model's bytes from memory as decoding does, not a few
    layers from the CPU's caches.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    head = max(shapes, key=lambda s: s[0] * s[1] * (s[2] == 1))
    steps = {
        m: [
            (_layer(m, out, inp, (out, inp, count) == head, gen), inp)
            for out, inp, count in shapes
            for _ in range(count)
        ]
        for m in modes
    }
    inputs = {inp: torch.randn(1, inp, generator=gen) for _, inp, _ in shapes}
    best = dict.fromkeys(modes, float("inf"))
    with torch.inference_mode():
        for layers in steps.values():  # warm every kernel once
            for layer, inp in layers[-len(shapes) :]:
                layer(inputs[inp])
        for _ in range(rounds):
            for mode in modes:
                start = time.perf_counter()
                for layer, inp in steps[mode]:
                    layer(inputs[inp])
                best[mode] = min(best[mode], time.perf_counter() - start)
    return best


_PREFERENCE = ("int4", "fp32", "int8")


def _device_key(kind: str, shapes: tuple[tuple[int, int, int], ...], *extra: Any) -> str:
    """What a measurement depends on: the CPU, torch, the cores, the model's shapes."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    parts = [kind, cpu, capability, f"torch {torch.__version__}", f"cores {available_cores()}"]
    return " | ".join([*parts, repr(shapes), *map(str, extra)])


def _memo(key: str, measure: Any) -> Any:
    """`measure()`, remembered per device in `probes.json` in fmai's cache (a start pays the
    probe once per CPU, torch version and model shape; `FMAI_REPROBE=1` measures again)."""
    import json

    from fmai_torch.default_model import cache_dir

    file = cache_dir() / "probes.json"
    try:
        known = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if key in known and os.environ.get("FMAI_REPROBE") != "1":
        return known[key]
    value = measure()
    known[key] = value
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
        tmp.replace(file)
    except OSError:
        pass
    return value


@functools.lru_cache(maxsize=8)
def _fastest(shapes: tuple[tuple[int, int, int], ...]) -> str:
    timings: dict[str, float] = _memo(_device_key("weights", shapes), lambda: _measure(shapes))
    LAST_PROBE.clear()
    LAST_PROBE.update(timings)
    fastest = min(timings.values())
    return next(m for m in _PREFERENCE if timings.get(m, float("inf")) <= fastest * 1.05)


def _measure(shapes: tuple[tuple[int, int, int], ...]) -> dict[str, float]:
    from fmai_torch.quant import int4_available

    modes = ("fp32", "int8", "int4") if int4_available() else ("fp32", "int8")
    with use_threads(1):  # the ranking of the layouts; the thread count is chosen after
        try:
            timings = _probe(modes, shapes)
        except RuntimeError:  # a CPU or build without the kernels: measure what runs
            timings = _probe(("fp32",), shapes)
    return timings


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
    key = _device_key("threads", shapes, mode)
    return int(_memo(key, lambda: _count_threads(cores, mode, shapes)))


def _count_threads(cores: int, mode: str, shapes: tuple[tuple[int, int, int], ...]) -> int:
    counts = sorted({1, cores} | {c for c in (2, 4, 8, 16) if c < cores})
    timings: dict[int, float] = {}
    for count in counts:
        with use_threads(count):
            timings[count] = _probe((mode,), shapes, rounds=2)[mode]
    best = min(timings.values())
    return min(c for c, t in timings.items() if t <= best * 1.1)
