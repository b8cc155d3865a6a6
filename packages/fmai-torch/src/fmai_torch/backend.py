"""`HFBackend`: a local Hugging Face causal LM with a KV cache kept across turns."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Sequence
from typing import Any, TypeVar

from fmai_core.backend import Generation, StreamChunk, to_thread_to_its_end
from fmai_core.errors import BackendError, ConfigurationError
from fmai_core.messages import Message
from fmai_torch.compiled import CompiledDecoder, resolve_compile
from fmai_torch.generation import GenerationRun
from fmai_torch.handle import ModelHandle
from fmai_torch.kv import MIN_GAIN, SEQUENTIAL_SPLICE, KVCache, attention_bias, cache_kwarg
from fmai_torch.kv_edit import EDIT_MODES, RopeEditor, edit_support
from fmai_torch.kv_pool import KVPool
from fmai_torch.lean import LeanDecoder, lean_support
from fmai_torch.loading import (
    LoadedModel,
    load_model,
    resolve_device,
    tokenizer_fingerprint,
)
from fmai_torch.signals import ModelSignals
from fmai_torch.weights import choose_threads, use_threads

__all__ = ["ConversationBackend", "HFBackend"]

T = TypeVar("T")

_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


class HFBackend:
    """A local Hugging Face chat model that reuses its KV cache from turn to turn.

    Each call renders the prompt with the tokenizer's chat template, finds the longest common
    token prefix with what the cache holds, crops the cache to it and lets `generate` prefill
    only the rest. Greedy output is token-identical with `kv_reuse` on or off; turns get
    faster as the conversation grows, because each pays only for its new tokens.

    Args:
        model: `"default"` (the embedded SmolLM2-135M-Instruct, see
            [`default_model`][fmai_torch.default_model]), a Hugging Face model folder, a
            llama-architecture `.gguf` file, a hub id, or an already loaded
            `PreTrainedModel` (then pass `tokenizer` too).
        tokenizer: The tokenizer, when `model` is a loaded model.
        device: `"auto"` (CUDA, then MPS, then CPU), or anything `torch.device` takes.
        dtype: `"auto"` (float32 on CPU, bfloat16 on CUDA), or a torch dtype or its name.
        weights: `"auto"`, `"fp32"`, `"bf16"`, `"int8"` (weight-only, per channel) or
            `"int4"` (weight-only, groups of 32; from a GGUF file its own Q4_1 blocks). `auto`
            is `int4` on a CPU for GGUF sources when a probe shows it faster, the device's
            usual dtype otherwise (see [`fmai_torch.weights`][fmai_torch.weights]).
        threads: CPU threads for the model's forward passes, or `"auto"` (measured once,
            never more than the cores this process may use; for a model passed in loaded,
            `auto` leaves torch's setting). Set only during the backend's own calls.
        compile: Decode with a static KV cache and a `torch.compile`d one-token forward
            (CUDA graphs) instead of eager `generate`: `"auto"` (on CUDA only), `True`,
            `False`, or the name of a `torch.compile` backend (see
            [`fmai_torch.compiled`][fmai_torch.compiled]). Cross-turn reuse, streaming and
            stop strings are unchanged; the first turn at each new cache capacity pays the
            compile (tens of seconds), and `Generation.extra["decode"]` says which loop ran.
        lean: Where not compiled, decode with the lean one-token loop instead of `generate`:
            the same operations bit for bit, without `generate`'s per-step machinery, and
            with fused query/key/value and gate/up products in the int8 and int4 layouts
            (see [`fmai_torch.lean`][fmai_torch.lean]). `"auto"`/`True`: for Llama models;
            `False`: always `generate`.
        kv_reuse: Keep the KV cache across calls. Off, every call recomputes its prompt.
        kv_edit: What the cache does when the prompt changes in the middle (an eviction):
            `"recompute"` (exact: crop at the first changed token, prefill the rest),
            `"rerotate"` (cut the removed tokens out of the cache and re-rotate the keys
            after them) or `"keep-positions"` (cut, and leave gaps in the position ids).
            Models these cannot edit (sliding-window layers, no RoPE, a RoPE whose
            frequencies depend on the length) recompute; `Generation.extra["kv"]` and
            `TurnStats.kv` say what each turn did (see the KV cache page).
        kv_keep_evicted: With `kv_edit="rerotate"`: keep the keys and values of up to this
            many tokens that leave the cache (evicted history, a recalled block that gave
            way), and splice them back, re-rotated, where a later prompt holds the same ids
            (a recalled segment); `TurnStats.kv["from_evicted"]` counts them. 0 (the
            default): off. Not exact, and less so than `rerotate` alone: those keys and
            values were computed in the context they left.
        kv_device_bytes: With several conversations (see
            [`conversation`][fmai_torch.HFBackend.conversation]): most bytes of KV caches
            on the device; least-recently-used ones move to host memory (`None`: no limit).
        kv_host_bytes: Most bytes of KV caches in host memory; past it they go to
            `kv_disk_dir`, or are dropped without one (`None`: no limit).
        kv_disk_dir: Folder for KV caches pushed out of host memory (see
            [`fmai_torch.kv_pool`][fmai_torch.kv_pool]).
        progress: Show a progress indicator on stderr while loading or converting.
        local_files_only: For hub ids: use the local Hugging Face cache, never download.
        signal_tokens: Most tokens one importance or embedding forward pass reads.

    Example:
        ```python
        from fmai_core import FiniteMemoryLLM
        from fmai_torch import HFBackend

        llm = FiniteMemoryLLM(HFBackend("default"), policy="sliding", max_tokens=2048)
        r = llm.chat("Hi! My name is Ada.")
        print(r.response, r.stats.reused_tokens, r.stats.prefill_tokens)
        ```
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Any = "default",
        *,
        tokenizer: Any = None,
        device: str | Any = "auto",
        dtype: str | Any = "auto",
        weights: str = "auto",
        threads: int | str | None = "auto",
        compile: bool | str = "auto",
        lean: bool | str = "auto",
        kv_reuse: bool = True,
        kv_edit: str = "recompute",
        kv_keep_evicted: int = 0,
        kv_device_bytes: int | None = None,
        kv_host_bytes: int | None = None,
        kv_disk_dir: str | os.PathLike[str] | None = None,
        progress: bool = False,
        local_files_only: bool = False,
        signal_tokens: int = 1024,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            dev = resolve_device(device)
            loaded = load_model(
                model,
                device=dev,
                dtype=dtype,
                weights=weights,
                progress=progress,
                local_files_only=local_files_only,
            )
        else:
            if tokenizer is None:
                raise ConfigurationError("Pass tokenizer= together with a loaded model.")
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or "model"
            loaded = LoadedModel(model.eval(), tokenizer, str(name), "object")
        model, tokenizer, name = loaded.model, loaded.tokenizer, loaded.name
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigurationError(
                f"The tokenizer of {name!r} has no chat template: use an instruction-tuned "
                "model, or set tokenizer.chat_template."
            )
        eos_ids = _end_ids(model, tokenizer, name)
        pad = tokenizer.pad_token_id
        self.handle = ModelHandle(
            model=model,
            tokenizer=tokenizer,
            device=next(model.parameters()).device,
            name=name,
            eos_ids=tuple(eos_ids),
            pad_id=int(pad) if pad is not None else eos_ids[0],
            cache_kw=cache_kwarg(),
        )
        self.source = loaded.source
        self.load_seconds = loaded.seconds
        self.weights = loaded.weights
        on_cpu = self.handle.device.type == "cpu"
        if not on_cpu or (threads == "auto" and loaded.source == "object"):
            self.threads: int | None = None  # a model passed in: torch's setting stands
        else:
            self.threads = choose_threads(threads, self.weights, config=model.config.to_dict())
        #: The `torch.compile` backend decoding uses, or `None` (eager `generate`).
        self.compile = resolve_compile(compile, self.handle.device)
        self._decoder: CompiledDecoder | LeanDecoder | None = None
        if self.compile:
            self._decoder = CompiledDecoder(model, self.compile, self.handle.cache_kw)
        elif lean not in (False, None) and lean_support(model) is None:
            self._decoder = LeanDecoder(model, self.handle.cache_kw)
        #: Whether decoding uses the lean loop (see [`fmai_torch.lean`][fmai_torch.lean]).
        self.lean = isinstance(self._decoder, LeanDecoder)
        self.kv_reuse = kv_reuse
        if kv_edit not in EDIT_MODES:
            raise ConfigurationError(
                f"kv_edit must be one of {', '.join(EDIT_MODES)}, got {kv_edit!r}."
            )
        self.kv_edit = kv_edit
        if kv_keep_evicted and int(kv_keep_evicted) < MIN_GAIN:
            raise ConfigurationError(
                f"kv_keep_evicted must be 0 (off) or at least {MIN_GAIN} tokens (a splice must "
                f"serve {MIN_GAIN} tokens or more), got {kv_keep_evicted!r}."
            )
        self.kv_keep_evicted = int(kv_keep_evicted)
        self.kv_edit_fallback = edit_support(model)
        self._editor = RopeEditor(model) if self.kv_edit_fallback is None else None
        self.tokenizer_id = tokenizer_fingerprint(tokenizer)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.signals = ModelSignals(self.handle, self._generate_detached, signal_tokens)
        self._fingerprint: str | None = None
        self._pool = KVPool(
            self._new_cache,
            self.handle.device,
            kv_device_bytes,
            kv_host_bytes,
            kv_disk_dir,
            meta=lambda: self._kv_meta(""),
        )
        self._counts: OrderedDict[str, int] = OrderedDict()

    # -- the model ------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The loaded `PreTrainedModel` (see [`ModelHandle`][fmai_torch.handle.ModelHandle])."""
        return self.handle.model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self.handle.tokenizer

    @property
    def device(self) -> Any:
        """The `torch.device` the model runs on."""
        return self.handle.device

    @property
    def name(self) -> str:
        """The model's name."""
        return self.handle.name

    @property
    def eos_ids(self) -> list[int]:
        """The token ids that end a reply."""
        return list(self.handle.eos_ids)

    @property
    def pad_id(self) -> int:
        """The padding id given to `generate`."""
        return self.handle.pad_id

    @property
    def signal_tokens(self) -> int:
        """Most tokens one importance or embedding forward pass reads."""
        return self.signals.max_tokens

    # -- tokens ---------------------------------------------------------------------------
    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text: `messages` through the chat template, with the reply opener."""
        return str(
            self.tokenizer.apply_chat_template(
                [m.to_dict() for m in messages], tokenize=False, add_generation_prompt=True
            )
        )

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """The prompt's token ids, exactly as the model will read them."""
        ids = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Exact prompt length of `messages`, chat-template overhead included."""
        return len(self.encode(messages))

    def count_text(self, text: str) -> int:
        """Tokens of bare `text` (no template)."""
        hit = self._counts.get(text)
        if hit is None:
            hit = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            self._counts[text] = hit
            if len(self._counts) > 8192:
                self._counts.popitem(last=False)
        return hit

    # -- the KV cache -----------------------------------------------------------------------
    @property
    def _kv(self) -> KVCache:
        """The cache of the backend's own conversation (key `""`)."""
        return self._pool.get("")[0]

    @property
    def pool(self) -> KVPool:
        """The conversations' KV caches (see [`KVPool`][fmai_torch.kv_pool.KVPool])."""
        return self._pool

    def conversation(self, key: str) -> ConversationBackend:
        """A backend for one conversation of many: same model, its own KV cache.

        Give each `FiniteMemoryLLM` its own, e.g.
        `FiniteMemoryLLM(backend.conversation("alice"), ...)`. Their caches share the
        byte budgets `kv_device_bytes` and `kv_host_bytes` (least recently used out
        first), and never each other's tokens.
        """
        if not key:
            raise ConfigurationError("A conversation key must be a non-empty string.")
        return ConversationBackend(self, key)

    def _new_cache(self) -> KVCache:
        keep = self.kv_edit == "keep-positions"
        kv = KVCache(
            self.kv_edit,
            self._editor,
            self.kv_edit_fallback,
            max_position=self.max_context if keep else 0,
            keep_evicted=self.kv_keep_evicted,
        )
        kv.forward = self._forward_into
        attention = getattr(self.model.config, "_attn_implementation", "eager")
        if attention not in ("eager", "sdpa"):  # takes no custom mask: one pass per gap
            kv.batch_gaps = False
            kv.splice_after_gap, kv.max_splice_gaps = SEQUENTIAL_SPLICE
        return kv

    def _forward_into(
        self, ids: list[int], positions: list[int], cache: Any, visible: Any = None
    ) -> None:
        """Run the model over `ids` at `positions`, appending their keys and values.

        `visible`, when given, is a boolean `(len(ids), cache length + len(ids))` tensor:
        which keys each new token attends to (an additive mask of the model's dtype is
        built from it, so eager and SDPA attention both take it). Runs the decoder without
        the language-model head: only the keys and values are wanted.
        """
        import torch

        dev = self.handle.device
        extra: dict[str, Any] = {}
        if visible is not None:
            extra["attention_mask"] = attention_bias(visible, self.model.dtype).to(dev)
        with torch.inference_mode(), use_threads(self.threads):
            self.model.base_model(
                input_ids=torch.tensor([ids], device=dev),
                position_ids=torch.tensor([positions], device=dev),
                use_cache=True,
                **{self.handle.cache_kw: cache},
                **extra,
            )

    @property
    def cached_tokens(self) -> int:
        """Tokens whose keys and values the cross-turn cache holds now."""
        return len(self._kv)

    def reset_cache(self) -> None:
        """Drop the cross-turn KV cache (the next call recomputes its whole prompt)."""
        with self.handle.lock:
            self._kv.reset()

    # -- KV files ---------------------------------------------------------------------------
    @property
    def model_fingerprint(self) -> str:
        """SHA-256 over the config and a sample of every weight (see
        [`model_fingerprint`][fmai_torch.kv_store.model_fingerprint]); computed once."""
        if self._fingerprint is None:
            from fmai_torch.kv_store import model_fingerprint

            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def _kv_meta(self, tag: str) -> dict[str, str]:
        """What a KV file must match to be restored (checked in this order)."""
        return {
            "checkpoint": tag,
            "tokenizer": self.tokenizer_id,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "model": self.model_fingerprint,
        }

    def save_kv(self, path: str | os.PathLike[str], tag: str = "", *, key: str = "") -> int:
        """Write the conversation's KV cache to `path` (safetensors); return its bytes.

        `tag` ties the file to something the caller checks on load (`FiniteMemoryLLM.save`
        passes the checkpoint's checksum). Writes nothing and returns 0 when the cache is
        empty. See [`fmai_torch.kv_store`][fmai_torch.kv_store].
        """
        from fmai_torch.kv_store import write_kv

        with self.handle.lock:
            kv = self._pool.get(key)[0]
            layers = kv.layers()
            if not layers:
                return 0
            meta = {**self._kv_meta(tag), "kv_edit": self.kv_edit}
            return write_kv(path, layers, kv.ids, kv.positions, meta, kv.evicted)

    def load_kv(self, path: str | os.PathLike[str], tag: str = "", *, key: str = "") -> str | None:
        """Restore a KV cache written by [`save_kv`][fmai_torch.HFBackend.save_kv].

        Returns `None` when restored, or why not (missing, damaged, another model, dtype,
        tokenizer or tag, or, for `kv_edit="recompute"`, written by an edit mode: its keys
        may have been edited, and `recompute` is exact); the cache is then empty and the
        next turn recomputes.
        """
        from fmai_torch.kv_store import KVFileError, read_kv

        expect = self._kv_meta(tag)
        if self.kv_edit == "recompute":
            expect["kv_edit"] = "recompute"
        with self.handle.lock:
            kv = self._pool.get(key)[0]
            kv.reset()
            try:
                stored = read_kv(path, expect, device=self.device)
            except KVFileError as exc:
                return str(exc)
            kv.restore(stored.layers, stored.ids, stored.positions, stored.evicted)
            return None

    # -- generation -------------------------------------------------------------------------
    def _start(
        self,
        messages: Sequence[Message],
        params: dict[str, Any],
        session: bool = True,
        key: str = "",
        cancel: threading.Event | None = None,
    ) -> GenerationRun:
        start = time.perf_counter()
        prompt = self.encode(messages)
        max_new = int(params.get("max_new_tokens", 256))
        if self.max_context and len(prompt) + max_new > self.max_context:
            raise BackendError(
                f"The prompt ({len(prompt)} tokens) plus max_new_tokens ({max_new}) exceeds "
                f"{self.name}'s context of {self.max_context} tokens: lower max_tokens."
            )
        kv, came = None, "none"
        if session and self.kv_reuse:
            kv, came = self._pool.get(key)
        run = GenerationRun(
            self.handle,
            prompt,
            params,
            kv,
            start,
            threads=self.threads,
            decoder=self._decoder,
            cancel=cancel,
        )
        run.kv_from = came
        return run

    def _generate_key(
        self,
        key: str,
        messages: Sequence[Message],
        params: dict[str, Any],
        cancel: threading.Event | None = None,
    ) -> Generation:
        if not _hold(self.handle.lock, cancel):
            raise _Cancelled
        try:
            run = self._start(messages, params, key=key, cancel=cancel)
            try:
                return run.run()
            finally:
                self._pool.enforce(keep=key)
        finally:
            self.handle.lock.release()

    def _stream_key(
        self,
        key: str,
        messages: Sequence[Message],
        params: dict[str, Any],
        cancel: threading.Event | None = None,
    ) -> Generator[StreamChunk, None, None]:
        if not _hold(self.handle.lock, cancel):
            return  # left while it waited for the model: nothing was run
        try:
            run = self._start(messages, params, key=key, cancel=cancel)
            try:
                yield from run.iterate()
            finally:
                self._pool.enforce(keep=key)
        finally:
            self.handle.lock.release()

    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Generate a reply (see [`Backend.generate`][fmai_core.backend.Backend.generate]).

        Params: `max_new_tokens` (default 256), `temperature` (0: greedy), `top_p`, `top_k`,
        `seed`, `stop` (strings), `repetition_penalty`, `min_new_tokens`.
        """
        return self._generate_key("", messages, params)

    def stream(
        self, messages: Sequence[Message], **params: Any
    ) -> Generator[StreamChunk, None, None]:
        """Yield text as the model produces it; the last chunk carries the Generation.

        `generate` runs in a worker thread and hands over each token as it is sampled.
        Closing the stream early stops generation after the current token.
        """
        yield from self._stream_key("", messages, params)

    def _generate_detached(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Generate without touching the conversation's KV cache (summaries, signals)."""
        with self.handle.lock:
            return self._start(messages, params, session=False).run()

    # -- model signals (fmai-core's ImportanceScorer, Embedder and Summarizer) --------------
    def score_importance(self, texts: Sequence[str], query: str) -> list[float]:
        """Attention the query pays to each text (see
        [`ModelSignals.score_importance`][fmai_torch.signals.ModelSignals.score_importance])."""
        with use_threads(self.threads):
            return self.signals.score_importance(texts, query)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Mean-pooled, L2-normalised last hidden states, one vector per text."""
        with use_threads(self.threads):
            return self.signals.embed(texts)

    def summarize(self, text: str, max_tokens: int) -> str:
        """A summary of `text` written by the model itself, leaving the KV cache alone."""
        with use_threads(self.threads):
            return self.signals.summarize(text, max_tokens)

    async def agenerate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Async [`generate`][fmai_torch.HFBackend.generate] (runs in a worker thread).

        Cancelling the call stops the generation after the token being made (a prefill
        under way finishes first) and waits for that, so the model is free when the
        cancellation arrives; what the KV cache then holds is exact.
        """
        return await _cancellable(lambda cancel: self._generate_key("", messages, params, cancel))

    async def astream(
        self, messages: Sequence[Message], **params: Any
    ) -> AsyncIterator[StreamChunk]:
        """Async [`stream`][fmai_torch.HFBackend.stream]: chunks arrive as tokens are made.

        Leaving early (closing it, or cancelling the task that reads it) stops the
        generation after the token being made, as `agenerate` does.
        """
        cancel = threading.Event()
        stream = _in_threads(self._stream_key("", messages, params, cancel), cancel)
        async with contextlib.aclosing(stream):  # closed here, not later by the collector
            async for chunk in stream:
                yield chunk

    def __repr__(self) -> str:
        return (
            f"HFBackend(model={self.name!r}, device={str(self.device)!r}, "
            f"weights={self.weights!r}, threads={self.threads}, compile={self.compile!r}, "
            f"lean={self.lean}, "
            f"kv_reuse={self.kv_reuse}, "
            f"kv_edit={self.kv_edit!r})"
        )


class ConversationBackend:
    """One conversation on a shared [`HFBackend`][fmai_torch.HFBackend]: its own KV cache
    in the backend's pool (see [`HFBackend.conversation`][fmai_torch.HFBackend.conversation]);
    everything else (model, tokenizer, counting, model signals) is the backend's."""

    def __init__(self, backend: HFBackend, key: str) -> None:
        self.backend = backend
        self.key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    @property
    def cached_tokens(self) -> int:
        """Tokens this conversation's cache holds on the device or host (0 on disk)."""
        return self.backend.pool.held(self.key)

    def reset_cache(self) -> None:
        """Forget this conversation's cache."""
        with self.backend.handle.lock:
            self.backend.pool.drop(self.key)

    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """[`HFBackend.generate`][fmai_torch.HFBackend.generate] on this conversation's cache."""
        return self.backend._generate_key(self.key, messages, params)

    def stream(
        self, messages: Sequence[Message], **params: Any
    ) -> Generator[StreamChunk, None, None]:
        """[`HFBackend.stream`][fmai_torch.HFBackend.stream] on this conversation's cache."""
        yield from self.backend._stream_key(self.key, messages, params)

    async def agenerate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Async `generate` (runs in a worker thread; cancelling it stops the model, as
        [`HFBackend.agenerate`][fmai_torch.HFBackend.agenerate])."""
        key = self.key
        return await _cancellable(
            lambda cancel: self.backend._generate_key(key, messages, params, cancel)
        )

    async def astream(
        self, messages: Sequence[Message], **params: Any
    ) -> AsyncIterator[StreamChunk]:
        """Async `stream`: chunks arrive as tokens are made (leaving early stops the model)."""
        cancel = threading.Event()
        chunks = _in_threads(self.backend._stream_key(self.key, messages, params, cancel), cancel)
        async with contextlib.aclosing(chunks):  # closed here, not later by the collector
            async for chunk in chunks:
                yield chunk

    def save_kv(self, path: str | os.PathLike[str], tag: str = "", *, key: str = "") -> int:
        """[`HFBackend.save_kv`][fmai_torch.HFBackend.save_kv] of this conversation."""
        return self.backend.save_kv(path, tag, key=self.key)

    def load_kv(self, path: str | os.PathLike[str], tag: str = "", *, key: str = "") -> str | None:
        """[`HFBackend.load_kv`][fmai_torch.HFBackend.load_kv] into this conversation."""
        return self.backend.load_kv(path, tag, key=self.key)

    def __repr__(self) -> str:
        return f"ConversationBackend({self.key!r}, {self.backend!r})"


def _end_ids(model: Any, tokenizer: Any, name: str) -> list[int]:
    """The ids that end a reply: end of sequence, the model's configured ones, end of turn."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    if eos is not None:
        ids.append(int(eos))
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in configured if isinstance(configured, list) else [configured]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    vocab = tokenizer.get_vocab()
    for token in _END_OF_TURN:
        if token in vocab and vocab[token] not in ids:
            ids.append(int(vocab[token]))
    if not ids:
        raise ConfigurationError(f"{name!r} has no end-of-sequence token to stop at.")
    return ids


async def _cancellable(call: Callable[[threading.Event], T]) -> T:
    """`call(cancel)` in a worker thread. Cancelled, it sets `cancel` (the generation stops
    after its current token) and waits for the thread before the cancellation goes on: a
    cancelled call leaves nothing running (one token, or the end of a prefill under way)."""
    cancel = threading.Event()
    return await to_thread_to_its_end(call, cancel, on_cancel=cancel.set)


class _Cancelled(Exception):
    """A call cancelled while it waited for the model: it ran nothing."""


def _hold(lock: threading.Lock, cancel: threading.Event | None) -> bool:
    """Take `lock` for a generation; `False` (not taken) once `cancel` is set first.

    A call cancelled while another conversation's turn has the model gives up its wait
    (checked every 20 ms) instead of waiting for that turn's end and then prefilling a
    prompt and making a token that nobody reads."""
    if cancel is None:
        lock.acquire()
        return True
    while not lock.acquire(timeout=0.02):
        if cancel.is_set():
            return False
    if cancel.is_set():
        lock.release()
        return False
    return True


async def _in_threads(
    iterator: Generator[StreamChunk, None, None], cancel: threading.Event
) -> AsyncGenerator[StreamChunk, None]:
    """Drive a blocking stream from async code: each step (and the close) in a worker thread.

    Left early (closed, or its task cancelled while a step is in a thread), it sets
    `cancel`, so the generation stops after its current token, and closes the stream once
    that step has returned (a generator cannot be closed while it runs: the close would
    fail and the model would go on to the end of the reply).
    """
    done = object()
    gate = threading.Lock()  # a step and the close never overlap

    def step() -> object:
        with gate:
            return next(iterator, done)

    def close() -> None:
        with gate:
            iterator.close()

    try:
        while True:
            chunk = await asyncio.to_thread(step)
            if chunk is done:
                break
            assert isinstance(chunk, StreamChunk)
            yield chunk
    finally:
        cancel.set()
        await to_thread_to_its_end(close)
