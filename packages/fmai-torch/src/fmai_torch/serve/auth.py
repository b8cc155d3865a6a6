"""API keys of `fmai serve`: Bearer tokens, and the owner of each conversation.

The server keeps only the SHA-256 digest of each key, and a conversation's owner is a
digest of the key that created it, so neither memory nor the store holds a key in plain
text, and nothing here logs one. Without keys every request has the same anonymous owner.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping

__all__ = ["ANONYMOUS", "KEYS_ENV", "Keys", "keys_from_env"]

#: The environment variable holding API keys (comma- or whitespace-separated).
KEYS_ENV = "FMAI_API_KEYS"
#: The owner of conversations on a server without keys.
ANONYMOUS = "anonymous"


def _digest(key: str) -> bytes:
    return hashlib.sha256(b"fmai-serve-key\0" + key.encode("utf-8")).digest()


def keys_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The keys in `$FMAI_API_KEYS` (empty when unset)."""
    raw = (os.environ if environ is None else environ).get(KEYS_ENV, "")
    return [k for k in raw.replace(",", " ").split() if k]


class Keys:
    """The accepted API keys, held as digests.

    Args:
        keys: The accepted keys; none means no authentication (loopback only).
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._digests = [_digest(k) for k in dict.fromkeys(keys) if k]

    @property
    def required(self) -> bool:
        """Whether requests must carry a key."""
        return bool(self._digests)

    def owner(self, authorization: str | None) -> str | None:
        """The owner for an `Authorization` header, or `None` when the key is missing or wrong.

        Every accepted key is compared in constant time, so the time taken does not tell
        which key (or how much of one) matched.
        """
        if not self._digests:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = _digest(token.strip())
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(known, digest)
        return digest.hex()[:32] if found else None

    def __repr__(self) -> str:  # never the keys
        return f"Keys({len(self._digests)} key(s))"
