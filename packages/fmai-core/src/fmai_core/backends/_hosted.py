"""What the hosted-API backends share: keys, SDK loading, error mapping, usage, counting.

A subclass supplies the provider's request shape and response parsing; this base turns SDK
exceptions into [`fmai_core.errors`][fmai_core.errors] classes, keeps the API key out of every
message and `repr`, and learns the token counter's correction from reported usage.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

from fmai_core.backend import Generation, StreamChunk, Usage
from fmai_core.backends.tokens import ChatCounter, TextCount, resolve_counter
from fmai_core.errors import (
    AuthenticationError,
    BackendError,
    BackendTimeoutError,
    FMAIError,
    RateLimitError,
    missing_dependency,
)
from fmai_core.messages import Message

__all__ = ["HostedBackend", "StreamTracker"]


class HostedBackend:
    """Base of [`OpenAIBackend`][fmai_core.backends.OpenAIBackend] and
    [`AnthropicBackend`][fmai_core.backends.AnthropicBackend] (not used directly).

    Retries are the SDK's own (`max_retries`): exponential backoff from 0.5 s up to 8 s with
    jitter, honouring `Retry-After` / `retry-after-ms` up to 60 s, on connection errors,
    timeouts, 408, 409, 429 and 5xx. `timeout` bounds each attempt (for a stream: each
    wait for the next bytes).
    """

    provider: ClassVar[str] = "hosted"
    sdk_name: ClassVar[str] = ""
    extra: ClassVar[str] = ""
    key_env: ClassVar[tuple[str, ...]] = ()
    _client_class: ClassVar[str] = ""
    _async_client_class: ClassVar[str] = ""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        tokenizer: str | TextCount | None = None,
        per_message_tokens: int = 3,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self._sdk: Any = self._import_sdk()
        self.model = model
        self.name = f"{self.provider}:{model}"
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
        self._api_key = self._resolve_key(api_key, api_key_env)
        count, self.tokenizer_id, self.exact_count = resolve_counter(model, tokenizer)
        self._counter = ChatCounter(count, per_message=per_message_tokens)
        self._client_options = dict(client_options or {})
        self._client: Any = None
        self._aclient: Any = None
        self._aloop: Any = None

    # -- set-up -------------------------------------------------------------------------
    @classmethod
    def _import_sdk(cls) -> Any:
        try:
            return importlib.import_module(cls.sdk_name)
        except ImportError:
            raise missing_dependency(cls.sdk_name, cls.extra) from None

    def _resolve_key(self, api_key: str | None, api_key_env: str | None) -> str:
        if api_key:
            return api_key
        names = (api_key_env,) if api_key_env else self.key_env
        for name in names:
            value = os.environ.get(name)
            if value:
                return value
        if self.base_url is not None:
            return "not-needed"  # local servers (vLLM, Ollama, llama.cpp) accept any key
        raise AuthenticationError(
            f"No API key for {self.provider}: pass api_key=... or set "
            f"{' or '.join(n for n in names if n)}."
        )

    def __repr__(self) -> str:
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"{type(self).__name__}(model={self.model!r}{where}, api_key=***)"

    def _client_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "api_key": self._api_key,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            **self._client_options,
        }
        if self.base_url is not None:
            args["base_url"] = self.base_url
        return args

    # -- counting -----------------------------------------------------------------------
    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of `messages`: exact with a tokenizer, else a safe over-estimate.

        Never below what the provider reported for a prompt of the same shape (the counter
        learns a correction factor from each call's usage).
        """
        return self._counter(messages)

    def count_text(self, text: str) -> int:
        """Tokens of bare text (no template overhead)."""
        return self._counter.count_text(text)

    def close(self) -> None:
        """Close the SDK's HTTP connections (the backend reopens them when used again)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close the async client's HTTP connections."""
        if self._aclient is not None:
            await self._aclient.close()
            self._aclient = None

    def __enter__(self) -> HostedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- errors and usage ---------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _error(self, exc: BaseException) -> FMAIError:
        """Translate an SDK or transport exception into an fmai error."""
        if isinstance(exc, FMAIError):
            return exc
        sdk = self._sdk
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        where = self.base_url or f"the {self.provider} API"
        # A timeout while a stream is read surfaces as the HTTP library's own ReadTimeout.
        timeout = any("Timeout" in cls.__name__ for cls in type(exc).__mro__)
        if timeout and not isinstance(exc, sdk.APIStatusError):
            return BackendTimeoutError(
                f"{where} did not answer within timeout={self.timeout}s after "
                f"{self.max_retries} retries ({detail}). Raise `timeout` or try again later."
            )
        if isinstance(exc, sdk.AuthenticationError | sdk.PermissionDeniedError):
            return AuthenticationError(
                f"{where} rejected the API key ({detail}). Check api_key or "
                f"{' / '.join(self.key_env)}."
            )
        if isinstance(exc, sdk.RateLimitError):
            return RateLimitError(
                f"{where} kept answering 429 (rate limited) through {self.max_retries} "
                f"retries ({detail}). Wait, raise `max_retries`, or lower the request rate."
            )
        if isinstance(exc, sdk.APIConnectionError):
            return BackendError(
                f"Could not reach {where} ({detail}). Check base_url and the network."
            )
        if isinstance(exc, sdk.APIStatusError):
            return BackendError(
                f"{where} answered HTTP {exc.status_code} ({detail}). Retry later; if it "
                "persists, check the model name and request parameters."
            )
        if isinstance(exc, sdk.APIError | ValueError | KeyError | AttributeError | OSError):
            return BackendError(
                f"{where} sent a response fmai could not use ({detail}). Retry; if it "
                "persists, check that base_url points to a compatible server."
            )
        return BackendError(
            f"The {self.provider} SDK failed unexpectedly ({detail}). Check the installed "
            f"SDK version (pip install -U 'fmai-core[{self.extra}]') and report it if it persists."
        )

    def _stream_error(self, exc: BaseException, tracker: StreamTracker) -> FMAIError:
        """The error for a stream that failed after it started: never a normal return."""
        err = self._error(exc)
        if type(err) is BackendError and not isinstance(exc, FMAIError):
            return BackendError(
                f"The {self.provider} stream broke off after {len(tracker.parts)} chunks "
                f"({self._scrub(f'{type(exc).__name__}: {exc}')}). The partial reply was "
                "not stored; send the message again."
            )
        return err

    # -- clients ------------------------------------------------------------------------
    def _sync(self) -> Any:
        if self._client is None:
            self._client = getattr(self._sdk, self._client_class)(**self._client_args())
        return self._client

    def _async(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            self._aclient = getattr(self._sdk, self._async_client_class)(**self._client_args())
            self._aloop = loop
        return self._aclient

    # -- what a provider supplies ---------------------------------------------------------
    def _create(self, client: Any) -> Any:
        """The SDK client's method that sends a request (plain or streamed)."""
        raise NotImplementedError

    def _request(
        self, messages: Sequence[Message], params: dict[str, Any], stream: bool
    ) -> dict[str, Any]:
        """The keyword arguments of `_create` for `messages`."""
        raise NotImplementedError

    def _generation(self, messages: Sequence[Message], resp: Any, start: float) -> Generation:
        """The Generation of a whole (not streamed) response."""
        raise NotImplementedError

    def _delta(self, tracker: StreamTracker, item: Any) -> str:
        """Record one streamed chunk or event in `tracker`; return its text delta."""
        raise NotImplementedError

    # -- the Backend protocol -----------------------------------------------------------
    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Send `messages` and return the whole reply (see `Backend.generate`)."""
        start = time.perf_counter()
        try:
            resp = self._create(self._sync())(**self._request(messages, params, False))
            return self._generation(messages, resp, start)
        except Exception as exc:
            raise self._error(exc) from None

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        """Yield text deltas as they arrive, then a chunk with the Generation.

        Raises a [`BackendError`][fmai_core.errors.BackendError] (never returns normally) when
        the stream breaks off before the provider's final chunk.
        """
        tracker = StreamTracker(self)
        try:
            items = self._create(self._sync())(**self._request(messages, params, True))
        except Exception as exc:
            raise self._error(exc) from None
        try:
            for item in items:
                text = self._delta(tracker, item)
                if text:
                    yield StreamChunk(text)
            gen = tracker.generation(messages)
        except Exception as exc:
            raise self._stream_error(exc, tracker) from None
        finally:
            items.close()
        yield StreamChunk("", generation=gen)

    async def agenerate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Async twin of `generate`."""
        start = time.perf_counter()
        try:
            create = self._create(self._async())
            resp = await create(**self._request(messages, params, False))
            return self._generation(messages, resp, start)
        except Exception as exc:
            raise self._error(exc) from None

    async def astream(
        self, messages: Sequence[Message], **params: Any
    ) -> AsyncIterator[StreamChunk]:
        """Async twin of `stream`."""
        tracker = StreamTracker(self)
        try:
            create = self._create(self._async())
            items = await create(**self._request(messages, params, True))
        except Exception as exc:
            raise self._error(exc) from None
        try:
            async for item in items:
                text = self._delta(tracker, item)
                if text:
                    yield StreamChunk(text)
            gen = tracker.generation(messages)
        except Exception as exc:
            raise self._stream_error(exc, tracker) from None
        finally:
            await items.close()
        yield StreamChunk("", generation=gen)

    def _usage(
        self,
        messages: Sequence[Message],
        prompt: int | None,
        reused: int,
        completion: int | None,
        text: str,
    ) -> tuple[Usage, bool]:
        """Build the Usage; estimate what the provider did not report. Returns (usage, reported)."""
        reported = prompt is not None
        if prompt is None:
            prompt = self._counter(messages)
        else:
            self._counter.observe(messages, prompt)
        if completion is None:
            completion = self._counter.count_text(text)
        reused = max(0, min(reused, prompt))
        usage = Usage(
            prompt_tokens=prompt,
            reused_tokens=reused,
            prefill_tokens=prompt - reused,
            completion_tokens=completion,
        )
        return usage, reported


class StreamTracker:
    """Collects a streamed reply and refuses to finish one that never completed."""

    def __init__(self, backend: HostedBackend) -> None:
        self.backend = backend
        self.start = time.perf_counter()
        self.first: float | None = None
        self.parts: list[str] = []
        self.finish: str | None = None
        self.prompt: int | None = None
        self.reused = 0
        self.completion: int | None = None
        self.extra: dict[str, Any] = {}

    def add(self, text: str) -> str:
        """Record a text delta; returns it."""
        if text and self.first is None:
            self.first = time.perf_counter()
        self.parts.append(text)
        return text

    def generation(self, messages: Sequence[Message]) -> Generation:
        """The final Generation; raises if the stream ended before the provider finished."""
        if self.finish is None:
            raise BackendError(
                f"The {self.backend.provider} stream ended before the reply was complete "
                "(no final event). Nothing was stored; send the message again."
            )
        text = "".join(self.parts)
        usage, reported = self.backend._usage(
            messages, self.prompt, self.reused, self.completion, text
        )
        end = time.perf_counter()
        ms = (end - self.start) * 1000
        ttft = ((self.first or end) - self.start) * 1000
        extra = {"provider": self.backend.provider, "usage_reported": reported, **self.extra}
        return Generation(
            text=text,
            usage=usage,
            latency_ms=ms,
            ttft_ms=ttft,
            finish_reason=self.finish,
            extra=extra,
        )
