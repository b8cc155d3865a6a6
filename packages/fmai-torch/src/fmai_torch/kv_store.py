"""KV caches on disk: one safetensors file per cache, refused unless it provably fits.

A file holds every layer's keys and values (`k.<layer>`, `v.<layer>`), the token ids and
position ids they cover, and, in the safetensors metadata, what they are only valid for:

- `model`: a fingerprint of the weights (name, config, and every tensor's name, shape, dtype
  and a strided sample of 256 of its values, hashed with SHA-256);
- `dtype`: the cache's dtype; `tokenizer`: the tokenizer's fingerprint;
- `checkpoint`: what the caller ties the cache to (`FiniteMemoryLLM.save` passes the
  checkpoint's checksum, so a cache restores only beside the exact checkpoint it was saved
  with);
- `ids_sha256`: a hash of the ids, so a damaged file is caught before use.

With `kv_keep_evicted`, the kept evicted runs go in the same file (`e.<run>.ids`,
`e.<run>.positions`, `e.<run>.k.<layer>`, `e.<run>.v.<layer>`; `evicted_runs` and
`evicted_sha256` in the metadata), so they come back with the cache; a file without them
(written before they were kept) reads as one with none.

[`read_kv`][fmai_torch.kv_store.read_kv] raises
[`KVFileError`][fmai_torch.kv_store.KVFileError] with the reason when anything differs or
cannot be read; the backend then recomputes, which is always correct.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "KVFileError", "StoredKV", "model_fingerprint", "read_kv", "write_kv"]

FORMAT = "fmai-kv-1"


_WORDS = {
    "model": "model (its weights differ)",
    "checkpoint": "checkpoint",
    "kv_edit": "kv_edit mode (an edited cache is not exact, as recompute is)",
}


class KVFileError(Exception):
    """A KV file that cannot be used (missing, damaged or made for something else)."""


@dataclass
class StoredKV:
    """What a KV file holds: per-layer `(keys, values)`, ids, positions and its metadata,
    and the kept evicted runs (`(ids, positions, [(keys, values) per layer])`, oldest
    first; see `KVCache(keep_evicted=...)`)."""

    layers: list[tuple[Any, Any]]
    ids: list[int]
    positions: list[int]
    meta: dict[str, str]
    evicted: list[tuple[list[int], list[int], list[tuple[Any, Any]]]] = field(default_factory=list)


def model_fingerprint(model: Any) -> str:
    """A SHA-256 over the model's config and a strided sample of every weight tensor."""
    import torch

    h = hashlib.sha256()
    config = getattr(model, "config", None)
    h.update(str(getattr(config, "_name_or_path", "")).encode())
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            if flat.numel():
                step = max(1, flat.numel() // 256)
                sample = flat[::step][:256].to("cpu")
                if sample.is_floating_point() or sample.is_complex():
                    sample = sample.to(torch.float64)
                else:
                    sample = sample.to(torch.int64)
                h.update(repr(sample.tolist()).encode())
    return h.hexdigest()


def _ids_hash(ids: list[int], positions: list[int]) -> str:
    return hashlib.sha256(json.dumps([ids, positions]).encode()).hexdigest()


def _evicted_hash(runs: list[tuple[list[int], list[int], list[tuple[Any, Any]]]]) -> str:
    return hashlib.sha256(json.dumps([[i, p] for i, p, _ in runs]).encode()).hexdigest()


def write_kv(
    path: str | os.PathLike[str],
    layers: list[tuple[Any, Any]],
    ids: list[int],
    positions: list[int],
    meta: dict[str, str],
    evicted: list[tuple[list[int], list[int], list[tuple[Any, Any]]]] | None = None,
) -> int:
    """Write a KV file atomically (a temporary file, fsync, rename); return its size.

    `evicted`: the cache's kept evicted runs, stored beside it (see the module)."""
    from safetensors.torch import save_file

    import torch

    target = Path(path)
    tensors: dict[str, Any] = {
        "ids": torch.tensor(ids, dtype=torch.int64),
        "positions": torch.tensor(positions, dtype=torch.int64),
    }
    for i, (k, v) in enumerate(layers):
        tensors[f"k.{i}"] = k.detach().to("cpu").contiguous()
        tensors[f"v.{i}"] = v.detach().to("cpu").contiguous()
    runs = evicted or []
    for r, (run_ids, run_pos, part) in enumerate(runs):
        tensors[f"e.{r}.ids"] = torch.tensor(run_ids, dtype=torch.int64)
        tensors[f"e.{r}.positions"] = torch.tensor(run_pos, dtype=torch.int64)
        for i, (k, v) in enumerate(part):
            tensors[f"e.{r}.k.{i}"] = k.detach().to("cpu").contiguous()
            tensors[f"e.{r}.v.{i}"] = v.detach().to("cpu").contiguous()
    info = {
        **meta,
        "format": FORMAT,
        "layers": str(len(layers)),
        "ids_sha256": _ids_hash(ids, positions),
    }
    if runs:
        info["evicted_runs"] = str(len(runs))
        info["evicted_sha256"] = _evicted_hash(runs)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=info)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target.stat().st_size


def read_kv(path: str | os.PathLike[str], expect: dict[str, str], device: Any = None) -> StoredKV:
    """Read a KV file and check its metadata against `expect` (every key must match).

    Raises:
        KVFileError: the file is missing, unreadable, damaged, or its metadata differs.
    """
    from safetensors import safe_open

    target = Path(path)
    if not target.exists():
        raise KVFileError(f"no KV file at {target}")
    try:
        with safe_open(str(target), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != FORMAT:
                raise KVFileError(f"not an fmai KV file ({meta.get('format')!r})")
            for key, want in expect.items():
                if meta.get(key) != want:
                    raise KVFileError(f"made for another {_WORDS.get(key, key)}")
            ids = [int(i) for i in f.get_tensor("ids").tolist()]
            positions = [int(p) for p in f.get_tensor("positions").tolist()]
            layers = []
            for i in range(int(meta["layers"])):
                k, v = f.get_tensor(f"k.{i}"), f.get_tensor(f"v.{i}")
                if device is not None:
                    k, v = k.to(device), v.to(device)
                layers.append((k, v))
            evicted = []
            for r in range(int(meta.get("evicted_runs", "0"))):
                run_ids = [int(i) for i in f.get_tensor(f"e.{r}.ids").tolist()]
                run_pos = [int(p) for p in f.get_tensor(f"e.{r}.positions").tolist()]
                part = []
                for i in range(len(layers)):
                    k, v = f.get_tensor(f"e.{r}.k.{i}"), f.get_tensor(f"e.{r}.v.{i}")
                    if device is not None:
                        k, v = k.to(device), v.to(device)
                    part.append((k, v))
                evicted.append((run_ids, run_pos, part))
    except KVFileError:
        raise
    except Exception as exc:  # safetensors raises several kinds on a damaged file
        raise KVFileError(f"unreadable ({type(exc).__name__}: {exc})") from exc
    if meta.get("ids_sha256") != _ids_hash(ids, positions):
        raise KVFileError("damaged (its token ids do not match their hash)")
    if len(positions) != len(ids) or any(k.shape[-2] != len(ids) for k, _ in layers):
        raise KVFileError("damaged (its tensors do not cover its token ids)")
    if evicted and meta.get("evicted_sha256") != _evicted_hash(evicted):
        raise KVFileError("damaged (its kept evicted ids do not match their hash)")
    for run_ids, run_pos, part in evicted:
        if len(run_pos) != len(run_ids) or any(k.shape[-2] != len(run_ids) for k, _ in part):
            raise KVFileError("damaged (its kept evicted tensors do not cover their ids)")
    return StoredKV(layers, ids, positions, meta, evicted)
