"""One call to `model.generate`: prompt prefix reuse, streaming, stop strings, usage."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from fmai_core.backend import Generation, StreamChunk, Usage
from fmai_core.errors import BackendError
from fmai_torch.compiled import CompiledDecoder
from fmai_torch.handle import ModelHandle
from fmai_torch.kv import KVCache
from fmai_torch.lean import LeanDecoder
from fmai_torch.streaming import IncrementalDecoder, StopCriteria, TokenStreamer, cut_at_stop
from fmai_torch.weights import use_threads

__all__ = ["GenerationRun"]


class GenerationRun:
    """Runs one generation of a model (for an [`HFBackend`][fmai_torch.HFBackend]).

    The caller holds `handle.lock` while the run generates.

    Args:
        handle: The model, its tokenizer and end-of-turn ids (see
            [`ModelHandle`][fmai_torch.handle.ModelHandle]).
        prompt: The full prompt's token ids.
        params: Generation parameters (see `HFBackend.generate`).
        kv: The cross-turn cache to reuse and update, or `None` to compute from scratch.
        start: `time.perf_counter()` when the call began (latency and TTFT count from it).
        threads: CPU threads for the forward passes (`None`: leave torch's setting).
        decoder: The compiled or lean decoder to use where it can (see
            [`fmai_torch.compiled`][fmai_torch.compiled] and [`fmai_torch.lean`][fmai_torch.lean]),
            or `None` for `generate`.
        cancel: An event that, once set from any thread, stops the generation after the
            token being made (the async calls set it when they are cancelled).
    """

    def __init__(
        self,
        handle: ModelHandle,
        prompt: list[int],
        params: dict[str, Any],
        kv: KVCache | None,
        start: float,
        threads: int | None = None,
        decoder: CompiledDecoder | LeanDecoder | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.handle = handle
        self.decoder = decoder
        #: Which loop decoded: `"compiled"`, `"lean"` or `"generate"` (and why not the others).
        self.decode: dict[str, Any] = {}
        self.threads = threads
        self.prompt = prompt
        self.params = params
        self.kv = kv
        self.start = start
        stop = params.get("stop") or []
        self.stop = [stop] if isinstance(stop, str) else [str(s) for s in stop]
        self.streamer = TokenStreamer()
        self.stopper = StopCriteria(handle.tokenizer, len(prompt), self.stop)
        if cancel is not None:
            self.stopper.cancel = cancel
        self.reused = 0
        self.kv_info: dict[str, Any] = {}
        self.kv_from = "none"  # where the pool found the cache: device, host, disk, new
        self.sequence: list[int] = []
        self.error: BaseException | None = None

    # -- the generate call -------------------------------------------------------------------
    def _kwargs(self) -> dict[str, Any]:
        p = self.params
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(p.get("max_new_tokens", 256)),
            "eos_token_id": list(self.handle.eos_ids),
            "pad_token_id": self.handle.pad_id,
        }
        temperature = float(p.get("temperature") or 0.0)
        if temperature > 0:
            kwargs.update(
                do_sample=True,
                temperature=temperature,
                top_p=float(p.get("top_p", 1.0)),
                top_k=int(p.get("top_k", 0)),
            )
        else:
            kwargs["do_sample"] = False
        for name, cast in (("min_new_tokens", int), ("repetition_penalty", float)):
            if p.get(name) is not None:
                kwargs[name] = cast(p[name])
        return kwargs

    def _generate(self) -> None:
        """Run `generate` or the compiled loop (in the calling thread); sets `self.sequence`."""
        import torch

        kwargs = self._kwargs()
        cache: Any = None
        reused, positions = 0, None
        if self.kv is not None:
            ready = self.kv.prepare(self.prompt, room=kwargs["max_new_tokens"])
            self.reused = reused = ready.reused
            self.kv_info = {**ready.info, "cache_from": self.kv_from}
            cache, positions = ready.cache, ready.position_ids
        why = "off"
        if self.decoder is not None:
            why = self.decoder.unsupported(self.params, positions) or ""
        if self.params.get("seed") is not None:
            torch.manual_seed(int(self.params["seed"]))
        try:
            with torch.inference_mode(), use_threads(self.threads):
                if not why and isinstance(self.decoder, LeanDecoder):
                    self._lean(cache, reused, kwargs["max_new_tokens"])
                    return
                if not why:
                    self._compiled(cache, reused, kwargs["max_new_tokens"])
                    return
                self.decode = {"loop": "generate", "why": why}
                out = self._hf_generate(cache, positions, kwargs)
        except BaseException:  # Ctrl-C too: a half-extended cache never serves a later turn
            if self.kv is not None:
                self.kv.reset()
            raise
        self.sequence = [int(i) for i in out[0].tolist()]
        if self.kv is not None:
            self.kv.commit(self.sequence)

    def _hf_generate(self, cache: Any, positions: list[int] | None, kwargs: dict[str, Any]) -> Any:
        from transformers import StoppingCriteriaList

        import torch

        handle = self.handle
        if cache is not None:
            kwargs[handle.cache_kw] = cache
        if positions is not None:
            kwargs["position_ids"] = torch.tensor(
                [positions], dtype=torch.long, device=handle.device
            )
        input_ids = torch.tensor([self.prompt], dtype=torch.long, device=handle.device)
        return handle.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            streamer=self.streamer,
            stopping_criteria=StoppingCriteriaList([self.stopper]),
            **kwargs,
        )

    def _run_decoder(self, decoder: Any, cache: Any, reused: int, max_new: int) -> list[int]:
        """Prefill the prompt's new suffix and decode with `decoder` (lean or compiled),
        streaming each token; returns the generated ids."""
        from transformers import DynamicCache

        if cache is None:
            cache = DynamicCache()
            reused = 0
        generated: list[int] = decoder.run(
            self.prompt[reused:],
            cache,
            len(self.prompt),
            max_new=max_new,
            eos=self.handle.eos_ids,
            pick=self._picker(),
            emit=lambda t: self.streamer.push([t]),
            stop=self.stopper.hit,
        )
        self.streamer.end()
        return generated

    def _finish(self, generated: list[int]) -> None:
        self.sequence = list(self.prompt) + generated
        if self.kv is not None:
            self.kv.commit(self.sequence)

    def _lean(self, cache: Any, reused: int, max_new: int) -> None:
        """Decode with the lean one-token loop (see `fmai_torch.lean`)."""
        assert isinstance(self.decoder, LeanDecoder)
        generated = self._run_decoder(self.decoder, cache, reused, max_new)
        self.decode = {
            "loop": "lean",
            "fused": self.decoder.fused,
            "quantized": self.decoder.quantized,
        }
        self._finish(generated)

    def _compiled(self, cache: Any, reused: int, max_new: int) -> None:
        """Decode with the compiled static-cache loop (see `fmai_torch.compiled`)."""
        assert isinstance(self.decoder, CompiledDecoder)
        shapes = len(self.decoder.shapes)
        generated = self._run_decoder(self.decoder, cache, reused, max_new)
        self.decode = {"loop": "compiled", "capacity": self.decoder.cap}
        if len(self.decoder.shapes) > shapes:
            self.decode["new_shape"] = True
        if self.decoder.disabled:
            self.decode["fallback"] = self.decoder.disabled
        self._finish(generated)

    def _picker(self) -> Any:
        """`pick(logits, step)`: the next token as `generate` would choose it."""
        import torch

        p = self.params
        temperature = float(p.get("temperature") or 0.0)
        min_new = int(p.get("min_new_tokens") or 0)
        eos = list(self.handle.eos_ids)
        warpers: list[Any] = []
        if temperature > 0:
            from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

            warpers.append(TemperatureLogitsWarper(temperature))
            if int(p.get("top_k", 0)) > 0:
                warpers.append(TopKLogitsWarper(int(p["top_k"])))
            if float(p.get("top_p", 1.0)) < 1.0:
                warpers.append(TopPLogitsWarper(float(p["top_p"])))

        def pick(logits: Any, step: int) -> Any:
            scores = logits.to(dtype=torch.float32, copy=True)
            if step < min_new:
                scores[:, eos] = float("-inf")
            if not warpers:
                if scores.device.type == "cpu" and scores.shape[0] == 1:
                    # numpy's argmax: the same first index of the largest value (NaN first,
                    # as torch's), in a few microseconds where torch's takes ~65 on 49k logits
                    return torch.tensor([[int(scores.numpy().argmax())]])
                return scores.argmax(-1, keepdim=True)
            for warp in warpers:
                scores = warp(None, scores)
            return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)

        return pick

    def _worker(self) -> None:
        try:
            self._generate()
        except BaseException as exc:  # handed to the consumer, raised there
            self.error = exc
            self.streamer.fail(exc)

    # -- results -----------------------------------------------------------------------------
    def _generation(self, text: str) -> Generation:
        end = time.perf_counter()
        generated = self.sequence[len(self.prompt) :]
        eos = set(self.handle.eos_ids)
        completion = [t for t in generated if t not in eos]
        text, stopped = cut_at_stop(text, self.stop)
        finished = stopped or bool(generated and generated[-1] in eos)
        first = self.streamer.first_token_at
        latency = (end - self.start) * 1000
        # Tokens a `rerotate` edit computed between the runs it kept were prefilled, not
        # served from the cache, though the prepared cache holds them.
        served = self.reused - int(self.kv_info.get("computed_between", 0))
        usage = Usage(
            prompt_tokens=len(self.prompt),
            reused_tokens=served,
            prefill_tokens=len(self.prompt) - served,
            completion_tokens=len(completion),
        )
        return Generation(
            text=text,
            usage=usage,
            latency_ms=latency,
            ttft_ms=(first - self.start) * 1000 if first is not None else latency,
            finish_reason="stop" if finished else "length",
            extra={
                "model": self.handle.name,
                "cached_tokens": len(self.kv) if self.kv else 0,
                "token_ids": generated,
                "kv": dict(self.kv_info),
                "decode": dict(self.decode),
            },
        )

    def _decode_all(self) -> str:
        generated = self.sequence[len(self.prompt) :]
        return str(self.handle.tokenizer.decode(generated, skip_special_tokens=True))

    def run(self) -> Generation:
        """Generate in the calling thread and return the complete Generation."""
        try:
            self._generate()
        except Exception as exc:
            raise _wrap(exc) from exc
        return self._generation(self._decode_all())

    def iterate(self) -> Iterator[StreamChunk]:
        """Generate in a worker thread, yielding text as tokens arrive, then the Generation."""
        worker = threading.Thread(target=self._worker, name="fmai-generate", daemon=True)
        decoder = IncrementalDecoder(self.handle.tokenizer, skip=self.handle.eos_ids)
        worker.start()
        emitted = ""
        try:
            try:
                for ids in self.streamer:
                    piece = decoder.push(ids)
                    if not piece:
                        continue
                    safe = _safe_prefix(emitted + piece, self.stop)
                    if len(safe) > len(emitted):
                        yield StreamChunk(safe[len(emitted) :])
                        emitted = safe
            except Exception as exc:
                raise _wrap(exc) from exc
            worker.join()  # `generate` ends the stream before it returns the sequence
            if isinstance(self.error, Exception):
                raise _wrap(self.error) from self.error
            decoder.flush()
            text, _ = cut_at_stop(self._decode_all(), self.stop)
            if len(text) > len(emitted) and text.startswith(emitted):
                yield StreamChunk(text[len(emitted) :])
            yield StreamChunk("", generation=self._generation(text))
        finally:
            self.stopper.cancel.set()  # a consumer that leaves early stops the worker
            worker.join()


def _safe_prefix(text: str, stop: list[str]) -> str:
    """The part of `text` that can be shown: before any stop string or its possible start."""
    text, stopped = cut_at_stop(text, stop)
    if stopped:
        return text
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold]


def _wrap(exc: Exception) -> Exception:
    if isinstance(exc, BackendError):
        return exc
    return BackendError(
        f"Generation failed: {type(exc).__name__}: {exc}. Retry, or check the model."
    )
