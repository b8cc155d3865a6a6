"""Model signals for the memory policies: attention importance, embeddings, summaries.

[`ModelSignals`][fmai_torch.signals.ModelSignals] computes them with one model (a
[`ModelHandle`][fmai_torch.handle.ModelHandle]). [`HFBackend`][fmai_torch.HFBackend] holds
one and passes its methods on, and thereby implements fmai-core's `ImportanceScorer`,
`Embedder` and `Summarizer` protocols. None of these touch the conversation's KV cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fmai_core.backend import Generation
from fmai_core.messages import Message
from fmai_core.summarizer import SUMMARY_PROMPT
from fmai_torch.handle import ModelHandle

__all__ = ["ModelSignals"]

_EMBED_BATCH = 8


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Switch `model` to eager attention for a block (fused kernels return no weights)."""
    current = getattr(model.config, "_attn_implementation", "eager")
    if current == "eager" or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


class ModelSignals:
    """Importance, embeddings and summaries computed by one model.

    Args:
        handle: The model; its lock is held for each forward pass.
        generate: Generates a reply to messages without touching any conversation's KV cache
            (`generate(messages, max_new_tokens=..., temperature=...) -> Generation`), for
            summaries; it takes the model's lock itself.
        max_tokens: Most tokens one importance or embedding forward pass reads.
    """

    def __init__(
        self,
        handle: ModelHandle,
        generate: Callable[..., Generation],
        max_tokens: int = 1024,
    ) -> None:
        self.handle = handle
        self.generate = generate
        self.max_tokens = max_tokens

    def _ids(self, text: str) -> list[int]:
        ids = self.handle.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]

    def _sink(self) -> list[int]:
        """A neutral first token: it soaks up the attention a sequence's start always gets."""
        bos = self.handle.tokenizer.bos_token_id
        return [int(bos)] if bos is not None else self._ids("\n")[:1]

    # -- importance ------------------------------------------------------------------------
    def score_importance(self, texts: Sequence[str], query: str) -> list[float]:
        """Attention the query's tokens pay to each text, averaged over layers and heads.

        The texts and the query are read in one eager-attention forward pass (texts first,
        in order, then the query); a text's score is the attention mass the query rows put
        on its tokens. Long inputs are cut to `max_tokens`: each text keeps its first
        tokens, in groups scored separately when they cannot share one pass.
        """
        if not texts:
            return []
        q = self._ids(query)[-max(8, self.max_tokens // 4) :] or self._sink()
        room = max(16, self.max_tokens - len(q) - 1)
        share = max(8, room // len(texts))
        pieces = [self._ids(t)[:share] or self._sink() for t in texts]
        scores: list[float] = []
        group: list[list[int]] = []
        for piece in pieces:
            if group and sum(map(len, group)) + len(piece) > room:
                scores += self._attention(group, q)
                group = []
            group.append(piece)
        scores += self._attention(group, q)
        return scores

    def _attention(self, pieces: list[list[int]], query: list[int]) -> list[float]:
        import torch

        model = self.handle.model
        sink = self._sink()
        ids = sink + [i for p in pieces for i in p] + query
        q_start = len(ids) - len(query)
        total = torch.zeros(len(ids), dtype=torch.float64)
        layers = 0

        def hook(_module: Any, _args: Any, output: Any) -> None:
            nonlocal total, layers
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                return
            rows = weights[0, :, q_start:, :].float()  # heads x query x keys
            total += rows.mean(dim=(0, 1)).double().cpu()
            layers += 1

        handles = [
            m.register_forward_hook(hook)
            for name, m in model.named_modules()
            if name.endswith("self_attn")
        ]
        try:
            with self.handle.lock, eager_attention(model), torch.inference_mode():
                model(torch.tensor([ids], device=self.handle.device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        if layers == 0:
            raise RuntimeError("The model returned no attention weights; importance unavailable.")
        total /= layers
        out: list[float] = []
        pos = len(sink)
        for p in pieces:
            out.append(float(total[pos : pos + len(p)].sum()))
            pos += len(p)
        return out

    # -- embeddings ------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Mean-pooled last hidden states, L2-normalised (one vector per text)."""
        import torch

        handle = self.handle
        vectors: list[list[float]] = []
        limit = max(8, self.max_tokens // 2)
        for i in range(0, len(texts), _EMBED_BATCH):
            batch = [self._ids(t)[:limit] or self._sink() for t in texts[i : i + _EMBED_BATCH]]
            width = max(map(len, batch))
            pad = int(handle.tokenizer.pad_token_id or 0)
            ids = torch.tensor([b + [pad] * (width - len(b)) for b in batch], device=handle.device)
            mask = torch.tensor(
                [[1] * len(b) + [0] * (width - len(b)) for b in batch], device=handle.device
            )
            with handle.lock, torch.inference_mode():
                out = handle.model(
                    input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True
                )
            hidden = out.hidden_states[-1].float()
            m = mask.unsqueeze(-1).float()
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            vectors += [[float(x) for x in row] for row in pooled.cpu().tolist()]
        return vectors

    # -- summaries -------------------------------------------------------------------------
    def summarize(self, text: str, max_tokens: int) -> str:
        """A summary written by the model itself (greedy), leaving the KV cache alone."""
        messages = [Message("system", SUMMARY_PROMPT), Message("user", text)]
        gen = self.generate(messages, max_new_tokens=max_tokens, temperature=0.0)
        return str(gen.text).strip()
