"""Token streaming out of `model.generate` running in a worker thread.

[`TokenStreamer`][fmai_torch.streaming.TokenStreamer] receives token ids from `generate` as
they are produced and hands them to the consuming thread through a queue, recording when the
first one arrived (time to first token).
[`IncrementalDecoder`][fmai_torch.streaming.IncrementalDecoder] turns ids into text pieces
without splitting a multi-byte character.
[`StopCriteria`][fmai_torch.streaming.StopCriteria] ends generation on a stop string or when
the consumer goes away.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

__all__ = ["IncrementalDecoder", "StopCriteria", "TokenStreamer"]

_END = object()


class TokenStreamer(BaseStreamer):
    """Collects generated token ids from `generate` for another thread.

    `generate` first calls `put` with the whole prompt (skipped), then once per new token.
    """

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        ids = [int(i) for i in value.reshape(-1).tolist()]
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.queue.put(ids)

    def push(self, ids: list[int]) -> None:
        """Hand over new token ids directly (the compiled loop; no prompt call first)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.queue.put(list(ids))

    def end(self) -> None:
        self.queue.put(_END)

    def fail(self, exc: BaseException) -> None:
        """Pass an exception raised in the worker to the consumer."""
        self.queue.put(exc)

    def __iter__(self) -> TokenStreamer:
        return self

    def __next__(self) -> list[int]:
        item = self.queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return list(item)


class IncrementalDecoder:
    """Decode a growing list of ids into text pieces, holding back incomplete characters."""

    def __init__(self, tokenizer: Any, skip: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.skip = set(skip)
        self.ids: list[int] = []
        self.text = ""

    def push(self, ids: Sequence[int]) -> str:
        """Add ids; return the newly completed text (possibly empty)."""
        self.ids.extend(i for i in ids if i not in self.skip)
        full = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if full.endswith("\ufffd"):
            return ""
        if not full.startswith(self.text):  # a tokenizer that rewrites earlier text
            return ""
        piece = full[len(self.text) :]
        self.text = full
        return piece

    def flush(self) -> str:
        """Return whatever text is still held back."""
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text = full
        return piece


class StopCriteria(StoppingCriteria):
    """Stop when the reply contains a stop string, or when `cancel` is set.

    Checked inside `generate` after every token, so the point of stopping does not depend on
    thread timing.
    """

    def __init__(self, tokenizer: Any, prompt_len: int, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop = [s for s in stop if s]
        self.window = max((len(s) for s in self.stop), default=0) + 8
        self.cancel = threading.Event()

    def hit(self, generated: Sequence[int]) -> bool:
        """Whether the reply so far (`generated`, prompt excluded) must stop now."""
        if self.cancel.is_set():
            return True
        if not self.stop:
            return False
        tail = list(generated[-self.window :])
        text = self.tokenizer.decode(tail, skip_special_tokens=True)
        return any(s in text for s in self.stop)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = self.hit(input_ids[0, self.prompt_len :].tolist()[-self.window :])
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the first stop string; return `(text, stopped)`."""
    cuts = [text.find(s) for s in stop if s and s in text]
    if not cuts:
        return text, False
    return text[: min(cuts)], True
