"""Deprecated: this module is now [`fmai_core.summarizer`][fmai_core.summarizer].

It held the summarizer built from a plain backend, not model signals (those are
[`Signals`][fmai_core.policy_api.Signals] in fmai-core and `fmai_torch.signals`).
`SUMMARY_PROMPT` and `backend_summarizer` still resolve here, with a `DeprecationWarning`;
import them from `fmai_core.summarizer`.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__: list[str] = []

_MOVED = ("SUMMARY_PROMPT", "backend_summarizer")


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'fmai_core.signals' has no attribute {name!r}")
    warnings.warn(
        f"fmai_core.signals.{name} moved to fmai_core.summarizer.{name}; import it from there "
        "(fmai_core.signals will be removed).",
        DeprecationWarning,
        stacklevel=2,
    )
    from fmai_core import summarizer

    return getattr(summarizer, name)
