"""A pool of KV caches, one per conversation, within a device and a host byte budget.

[`HFBackend`][fmai_torch.HFBackend] keeps one [`KVCache`][fmai_torch.KVCache] per
conversation key (see [`HFBackend.conversation`][fmai_torch.HFBackend.conversation]). The
cache of the turn being run is on the device; after each turn, least-recently-used caches
move to host memory while the device holds more than `device_bytes`, then to disk (one
safetensors file each, under `disk_dir`) while host memory holds more than `host_bytes`.
Without a `disk_dir`, or when the file cannot be written (a full or unwritable disk), they
are dropped instead, and that conversation's next turn recomputes.
A cache comes back to the device, whole and bit for bit (its kept evicted tokens with it,
`kv_keep_evicted`), on its conversation's next turn.
Conversations never share a cache: each key has its own, and a disk file is read back only
for the key it was written for.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmai_torch.kv import KVCache

__all__ = ["KVPool"]


class KVPool:
    """Caches keyed by conversation, least recently used first out (see the module).

    Args:
        new_cache: Makes an empty `KVCache` for a new conversation.
        device: Where caches in use live.
        device_bytes: Most bytes of keys and values on the device (`None`: no limit). The
            cache in use stays even when it alone is larger.
        host_bytes: Most bytes in host memory (`None`: no limit; 0: none there).
        disk_dir: Folder for caches pushed out of host memory (`None`: drop them).
        meta: What a disk file must match to be read back (the model fingerprint, dtype,
            tokenizer), computed when first needed.
    """

    def __init__(
        self,
        new_cache: Callable[[], KVCache],
        device: Any,
        device_bytes: int | None = None,
        host_bytes: int | None = None,
        disk_dir: str | os.PathLike[str] | None = None,
        meta: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.new_cache = new_cache
        self.device = device
        self.device_bytes = device_bytes
        self.host_bytes = host_bytes
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.meta = meta or dict
        self._caches: OrderedDict[str, KVCache] = OrderedDict()  # least recent first
        self._tier: dict[str, str] = {}  # "device" | "host" | "disk"
        self.moves = {
            "to_host": 0,
            "to_disk": 0,
            "dropped": 0,
            "from_host": 0,
            "from_disk": 0,
            "disk_errors": 0,
        }
        #: Why the last cache that should have gone to disk could not be written (it was
        #: dropped instead: a full or unwritable `disk_dir` never fails a turn), or `None`.
        self.disk_error: str | None = None

    def __contains__(self, key: str) -> bool:
        return key in self._caches

    def __len__(self) -> int:
        return len(self._caches)

    def tier(self, key: str) -> str | None:
        """Where `key`'s cache is now (`"device"`, `"host"`, `"disk"`), or `None`."""
        return self._tier.get(key)

    def held(self, key: str) -> int:
        """Tokens `key`'s cache holds on the device or host (0 on disk or unknown)."""
        kv = self._caches.get(key)
        return len(kv) if kv is not None else 0

    def bytes(self, tier: str) -> int:
        """Bytes of keys and values held in `tier` (`"device"` or `"host"`)."""
        return sum(self._caches[k].nbytes for k, t in self._tier.items() if t == tier)

    def get(self, key: str) -> tuple[KVCache, str]:
        """`key`'s cache on the device, and where it came from (`"device"`, `"host"`,
        `"disk"`, or `"new"`); it becomes the most recently used."""
        kv = self._caches.get(key)
        if kv is None:
            kv = self.new_cache()
            self._caches[key] = kv
            self._tier[key] = "device"
            return kv, "new"
        self._caches.move_to_end(key)
        came = self._tier[key]
        if came == "host":
            kv.to(self.device)
            self.moves["from_host"] += 1
        elif came == "disk":
            self._read(key, kv)
            self.moves["from_disk"] += 1
        self._tier[key] = "device"
        return kv, came

    def drop(self, key: str) -> None:
        """Forget `key`'s cache (and its disk file)."""
        self._caches.pop(key, None)
        self._tier.pop(key, None)
        path = self._path(key)
        if path is not None and path.exists():
            path.unlink()

    def enforce(self, keep: str | None = None) -> None:
        """Move least-recently-used caches out until both budgets hold (never `keep`)."""
        for key in list(self._caches):
            if self.device_bytes is None or self.bytes("device") <= self.device_bytes:
                break
            if key != keep and self._tier[key] == "device":
                self._caches[key].to("cpu")
                self._tier[key] = "host"
                self.moves["to_host"] += 1
        for key in list(self._caches):
            if self.host_bytes is None or self.bytes("host") <= self.host_bytes:
                break
            if key != keep and self._tier[key] == "host":
                self._write(key)

    # -- disk -----------------------------------------------------------------------------
    def _path(self, key: str) -> Path | None:
        if self.disk_dir is None:
            return None
        return self.disk_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.kv.safetensors"

    def _write(self, key: str) -> None:
        from fmai_torch.kv_store import write_kv

        kv = self._caches[key]
        path = self._path(key)
        layers = kv.layers()
        if path is None or not layers:
            kv.reset()
            self._tier[key] = "device"  # empty: nothing held anywhere
            self.moves["dropped"] += 1
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            meta = {**self.meta(), "conversation": key}
            write_kv(path, layers, kv.ids, kv.positions, meta, kv.evicted)
        except Exception as exc:  # a full or unwritable disk: dropped, recomputed next turn
            self.disk_error = f"{type(exc).__name__}: {exc}"
            self.moves["disk_errors"] += 1
            kv.reset()
            self._tier[key] = "device"
            self.moves["dropped"] += 1
            return
        kv.reset()
        self._tier[key] = "disk"
        self.moves["to_disk"] += 1

    def _read(self, key: str, kv: KVCache) -> None:
        from fmai_torch.kv_store import KVFileError, read_kv

        path = self._path(key)
        kv.reset()
        if path is None:
            return
        try:
            stored = read_kv(path, {**self.meta(), "conversation": key}, device=self.device)
        except KVFileError:
            return  # recomputed on this turn, which is always correct
        finally:
            if path.exists():
                path.unlink()
        kv.restore(stored.layers, stored.ids, stored.positions, stored.evicted)
