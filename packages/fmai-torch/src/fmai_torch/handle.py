"""`ModelHandle`: a loaded model and what generation and the model signals need to know of it.

[`HFBackend`][fmai_torch.HFBackend] builds one handle when it loads its model and passes it
to [`GenerationRun`][fmai_torch.generation.GenerationRun] (one call to `generate`) and to
[`ModelSignals`][fmai_torch.signals.ModelSignals] (importance, embeddings, summaries), so
neither reads the backend's own attributes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelHandle"]


@dataclass(frozen=True)
class ModelHandle:
    """A loaded causal LM, its tokenizer and the facts about them a forward pass needs.

    Attributes:
        model: The `PreTrainedModel`, in eval mode.
        tokenizer: Its tokenizer (with a chat template).
        device: The `torch.device` the model's weights are on.
        name: The model's name (`Generation.extra["model"]`).
        eos_ids: The token ids that end a reply (end of sequence and end of turn).
        pad_id: The padding id given to `generate` (the first of `eos_ids` if the tokenizer
            has none).
        cache_kw: The keyword under which `generate` takes a cache in the installed
            transformers (`fmai_torch.kv.cache_kwarg()`).
        lock: Held for every use of the model (a generation, a signal's forward pass): one
            at a time. Not reentrant, so that a stream may end in another thread.
    """

    model: Any
    tokenizer: Any
    device: Any
    name: str
    eos_ids: tuple[int, ...]
    pad_id: int
    cache_kw: str
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
