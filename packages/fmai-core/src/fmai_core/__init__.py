"""fmai-core: bounded conversational memory for LLMs, with no heavy dependency.

Names are loaded on first use (PEP 562), so `import fmai_core` costs almost nothing and
loads only the standard library; `from fmai_core import FiniteMemoryLLM` loads the engine.

Example:
    ```python
    from fmai_core import FiniteMemoryLLM
    from fmai_core.testing import EchoBackend

    llm = FiniteMemoryLLM(EchoBackend(), policy="hybrid", max_tokens=512, max_new_tokens=64)
    r = llm.chat("My sister's name is Ada.")
    print(r.response, r.stats.prompt_tokens)
    ```
"""

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

    from fmai_core.backend import Backend, Generation, StreamChunk, Usage
    from fmai_core.config import MemoryConfig
    from fmai_core.engine import ChatResult, FiniteMemoryLLM
    from fmai_core.errors import FMAIError
    from fmai_core.messages import Message
    from fmai_core.policies import Policy, get_policy, register_policy
    from fmai_core.segments import Segment
    from fmai_core.stats import MemoryStats, TurnStats
    from fmai_core.trace import TurnTrace

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Backend": "fmai_core.backend",
    "Generation": "fmai_core.backend",
    "StreamChunk": "fmai_core.backend",
    "Usage": "fmai_core.backend",
    "MemoryConfig": "fmai_core.config",
    "ChatResult": "fmai_core.engine",
    "FiniteMemoryLLM": "fmai_core.engine",
    "FMAIError": "fmai_core.errors",
    "Message": "fmai_core.messages",
    "Policy": "fmai_core.policies",
    "get_policy": "fmai_core.policies",
    "register_policy": "fmai_core.policies",
    "Segment": "fmai_core.segments",
    "MemoryStats": "fmai_core.stats",
    "TurnStats": "fmai_core.stats",
    "TurnTrace": "fmai_core.trace",
}

__all__ = [
    "Backend",
    "ChatResult",
    "FMAIError",
    "FiniteMemoryLLM",
    "Generation",
    "MemoryConfig",
    "MemoryStats",
    "Message",
    "Policy",
    "Segment",
    "StreamChunk",
    "TurnStats",
    "TurnTrace",
    "Usage",
    "__version__",
    "get_policy",
    "register_policy",
]


def __getattr__(name: str) -> "Any":
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fmai_core' has no attribute {name!r}")
    __import__(module)
    value = getattr(sys.modules[module], name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
