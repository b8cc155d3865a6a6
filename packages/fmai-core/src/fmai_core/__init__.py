"""fmai-core: bounded conversational memory for LLMs, with no heavy dependency.

Example:
    ```python
    from fmai_core import FiniteMemoryLLM
    from fmai_core.testing import EchoBackend

    llm = FiniteMemoryLLM(EchoBackend(), policy="hybrid", max_tokens=512, max_new_tokens=64)
    r = llm.chat("My sister's name is Ada.")
    print(r.response, r.stats.prompt_tokens)
    ```
"""

from __future__ import annotations

from fmai_core.backend import Backend, Generation, StreamChunk, Usage
from fmai_core.engine import ChatResult, FiniteMemoryLLM
from fmai_core.errors import FMAIError
from fmai_core.messages import Message
from fmai_core.policies import Policy, get_policy, register_policy
from fmai_core.segments import Segment
from fmai_core.stats import MemoryStats, TurnStats

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "ChatResult",
    "FMAIError",
    "FiniteMemoryLLM",
    "Generation",
    "MemoryStats",
    "Message",
    "Policy",
    "Segment",
    "StreamChunk",
    "TurnStats",
    "Usage",
    "__version__",
    "get_policy",
    "register_policy",
]
