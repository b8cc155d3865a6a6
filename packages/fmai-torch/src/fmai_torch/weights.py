"""Weight formats (`fp32`, `bf16`, `int8`, `int4`) and thread counts, chosen by measurement.

`HFBackend(weights=...)` takes one of [`WEIGHTS`][fmai_torch.weights.WEIGHTS]. `"auto"` picks:

- a model passed in already loaded: left as it is;
- an explicit `dtype=`: that dtype, not quantized;
- CUDA or MPS: the device's half type (bfloat16 on CUDA, float16 on MPS), as before;
- the CPU, for a GGUF source (the embedded model, a `.gguf` file): `int4` when torch has the
  CPU int4 kernels and a 16 MB probe matrix product runs at least 1.25x faster than float32
  (int4 is the file's own precision, so nothing is lost against the file); else `fp32`;
- the CPU, for a hub id or a folder: `fp32` (quantizing such a model is opt-in).

`threads="auto"` times the same probe at 1, 2, 4 ... up to the cores this process may run on
(`os.sched_getaffinity`), and takes the fastest count (the smaller one within 10 %). The
count is set only while the backend runs a forward pass, and restored after.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from typing import Any

from fmai_core.errors import ConfigurationError

__all__ = ["WEIGHTS", "available_cores", "choose_threads", "choose_weights", "use_threads"]

WEIGHTS = ("auto", "fp32", "bf16", "int8", "int4")


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


def _probe(mode: str, reps: int = 12) -> float:
    """Seconds per product of a 1 x 1024 activation by a 4096 x 1024 weight in `mode`."""
    import torch
    from fmai_torch.quant import Int4Linear

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4096, 1024, generator=gen)
    x = torch.randn(1, 1024, generator=gen)
    layer: Any = Int4Linear.from_float(weight) if mode == "int4" else torch.nn.Linear(1024, 4096)
    if mode != "int4":
        layer.weight.data = weight
    best = float("inf")
    with torch.inference_mode():
        layer(x)
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                layer(x)
            best = min(best, (time.perf_counter() - start) / reps)
    return best


@functools.lru_cache(maxsize=1)
def _int4_speedup() -> float:
    from fmai_torch.quant import int4_available

    if not int4_available():
        return 0.0
    try:
        return _probe("fp32") / _probe("int4")
    except RuntimeError:  # a CPU or build without the kernels
        return 0.0


def choose_weights(weights: str, *, device: Any, dtype: str | Any, gguf: bool) -> str:
    """Resolve `weights` (see the module docstring) for a model about to load on `device`."""
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
    return "int4" if gguf and _int4_speedup() >= 1.25 else "fp32"


def choose_threads(threads: int | str | None, mode: str) -> int:
    """The thread count for `threads` (`"auto"` measures; a number is capped at the cores)."""
    cores = available_cores()
    if threads is not None and threads != "auto":
        count = int(threads)
        if count < 1:
            raise ConfigurationError(f"threads must be at least 1, not {threads!r}.")
        return min(count, cores)
    return _measured_threads(cores, "int4" if mode == "int4" else "fp32")


@functools.lru_cache(maxsize=4)
def _measured_threads(cores: int, mode: str) -> int:
    counts = sorted({1, cores} | {c for c in (2, 4, 8, 16) if c < cores})
    timings: dict[int, float] = {}
    for count in counts:
        with use_threads(count):
            timings[count] = _probe(mode)
    best = min(timings.values())
    return min(c for c, t in timings.items() if t <= best * 1.1)
