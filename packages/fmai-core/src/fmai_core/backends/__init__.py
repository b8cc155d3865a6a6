"""Backends for hosted APIs and plain functions.

The classes load lazily, so `import fmai_core.backends` imports no SDK; each SDK is imported
when its backend is built, and a missing one raises
[`MissingDependencyError`][fmai_core.errors.MissingDependencyError] naming the extra.

- [`OpenAIBackend`][fmai_core.backends.OpenAIBackend]: any OpenAI-compatible endpoint
  (`pip install 'fmai-core[openai]'`).
- [`AnthropicBackend`][fmai_core.backends.AnthropicBackend]: the Messages API
  (`pip install 'fmai-core[anthropic]'`).
- [`CallableBackend`][fmai_core.backends.CallableBackend]: wraps a function `messages -> str`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fmai_core.backends.anthropic_messages import AnthropicBackend
    from fmai_core.backends.callable import CallableBackend
    from fmai_core.backends.openai_chat import OpenAIBackend

__all__ = ["AnthropicBackend", "CallableBackend", "OpenAIBackend"]

_LAZY = {
    "OpenAIBackend": "fmai_core.backends.openai_chat",
    "AnthropicBackend": "fmai_core.backends.anthropic_messages",
    "CallableBackend": "fmai_core.backends.callable",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fmai_core.backends' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
