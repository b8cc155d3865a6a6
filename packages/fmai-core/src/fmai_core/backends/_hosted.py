"""What the hosted-API backends share: keys, SDK loading, retries, error mapping, usage.

A subclass supplies the provider's request shape and response parsing; this base retries
under one deadline per turn, turns SDK exceptions into [`fmai_core.errors`][fmai_core.errors]
classes, keeps the API key out of every message and `repr`, and fits the token counter's
correction from reported usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import importlib
import logging
import math
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

from fmai_core.backend import Generation, StreamChunk, Usage, token_count
from fmai_core.backends.server_count import ServerCounter
from fmai_core.backends.tokens import (
    FIRST_CALL_FACTOR,
    FIRST_CALL_FACTOR_EXACT,
    FIRST_CALL_OVERHEAD,
    ChatCounter,
    TextCount,
    resolve_counter,
)
from fmai_core.errors import (
    AuthenticationError,
    BackendError,
    BackendTimeoutError,
    ConfigurationError,
    FMAIError,
    RateLimitError,
    RequestRejectedError,
    missing_dependency,
)
from fmai_core.messages import Message

__all__ = [
    "COUNT_MODES",
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_TURN_TIMEOUT",
    "HostedBackend",
    "StreamTracker",
]

#: How a hosted backend counts prompt tokens before a call (see `OpenAIBackend`'s `count`).
COUNT_MODES = ("auto", "server", "estimate")
_log = logging.getLogger("fmai")

#: Seconds one turn may take, all attempts, retry waits and the whole stream included.
DEFAULT_TURN_TIMEOUT = 120.0
#: The longest `Retry-After` fmai waits for; a server asking for more gets an error at once.
DEFAULT_MAX_RETRY_AFTER = 30.0
_BACKOFF_FIRST = 0.5  # seconds before the first retry without Retry-After (doubling, jittered)
_BACKOFF_MAX = 8.0
_RETRY_STATUS = frozenset({408, 409, 429})
# Answers that refuse the request itself: RequestRejectedError, not retried.
_REJECTED = frozenset({400, 404, 413, 422})


class HostedBackend:
    """Base of [`OpenAIBackend`][fmai_core.backends.OpenAIBackend] and
    [`AnthropicBackend`][fmai_core.backends.AnthropicBackend] (not used directly).

    Retries are fmai's own (the SDK's are turned off, so one deadline covers them all):
    up to `max_retries`, on connection errors, timeouts, 408, 409, 429 and 5xx (a server's
    `x-should-retry` header overrides), waiting what `Retry-After` / `retry-after-ms` asks,
    else an exponential backoff from 0.5 s up to 8 s with jitter.

    - `timeout` bounds each attempt (for a stream: each wait for the next bytes).
    - `turn_timeout` bounds the whole call: every attempt, every wait between attempts and,
      for a stream, the stream to its end. Each attempt's `timeout` is cut to what is left;
      a retry whose wait would end past the deadline is not made. Async calls are cut at the
      deadline exactly (Python 3.11+); a sync stream is checked at every chunk, and its reads
      time out after the time that was left when it opened. Past it: `BackendTimeoutError`.
      `None` turns the deadline off.
    - `max_retry_after` caps the `Retry-After` honoured: a server that asks for a longer wait
      (or one past the deadline) gets no retry, and the call raises at once
      (`RateLimitError` for a 429, else `BackendError`), saying how long it asked to wait.
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
        turn_timeout: float | None = DEFAULT_TURN_TIMEOUT,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        tokenizer: str | TextCount | None = None,
        per_message_tokens: int = 3,
        client_options: dict[str, Any] | None = None,
        count: str = "estimate",
        count_per_text: bool = True,
    ) -> None:
        if count not in COUNT_MODES:
            raise ConfigurationError(
                f"count must be one of {', '.join(map(repr, COUNT_MODES))}, got {count!r}."
            )
        self.timeout = _seconds("timeout", timeout)
        self.turn_timeout = None if turn_timeout is None else _seconds("turn_timeout", turn_timeout)
        self.max_retry_after = _seconds("max_retry_after", max_retry_after, zero=True)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(
                f"max_retries must be a whole number >= 0, got {max_retries!r}."
            )
        self.max_retries = max_retries
        self._sdk: Any = self._import_sdk()
        self.model = model
        self.name = f"{self.provider}:{model}"
        self.base_url = base_url
        self._api_key = self._resolve_key(api_key, api_key_env)
        text_count, self.tokenizer_id, self.exact_count = resolve_counter(model, tokenizer)
        factor = FIRST_CALL_FACTOR_EXACT if self.exact_count else FIRST_CALL_FACTOR
        self._counter = ChatCounter(
            text_count,
            per_message=per_message_tokens,
            margin=(FIRST_CALL_OVERHEAD, factor),
            max_factor=factor,
            per_text=count_per_text,
        )
        self.count = count
        self._server_counter: ServerCounter | None = None
        self._probed = count == "estimate"
        self._probe_lock = threading.Lock()
        self._slack = 0  # tokens the server reported beyond its own count (0 if consistent)
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
            **self._client_options,
            "max_retries": 0,  # fmai retries itself, under the turn's deadline
        }
        if self.base_url is not None:
            args["base_url"] = self.base_url
        return args

    # -- counting -----------------------------------------------------------------------
    def _server_counts(self) -> ServerCounter | None:
        """The server's own counter when it has one (probed once, on the first count)."""
        if not self._probed:
            with self._probe_lock:
                if not self._probed:
                    self._probe()
        return self._server_counter

    def _probe(self) -> None:
        """Probe the server once for its counting endpoints (under `_probe_lock`)."""
        counter = self._make_server_counter()
        kind = counter.probe() if counter is not None else None
        where = self.base_url or f"the {self.provider} API"
        if kind is None:
            note = counter.note if counter is not None else "no base_url"
            if self.count == "server":
                raise ConfigurationError(
                    f"count='server', but {where} offers no token-counting endpoint fmai "
                    f"knows (llama.cpp's /apply-template and /tokenize, vLLM's /tokenize: "
                    f"{note}). Use count='auto' or 'estimate'."
                )
            _log.info(
                "fmai: %s offers no token counting (%s); counting with %s and a "
                "first-call margin of %d tokens + x%.2g until usage is reported",
                where,
                note,
                self.tokenizer_id,
                FIRST_CALL_OVERHEAD,
                self._counter.factor,
            )
        else:
            _log.info("fmai: counting tokens exactly with %s's %s endpoints", where, kind)
            self._server_counter = counter
            self.tokenizer_id = f"server:{kind}:{self.model}"
            self.exact_count = True
        self._probed = True

    def _make_server_counter(self) -> ServerCounter | None:
        """A counter for this provider's server, if one could exist (`None`: never)."""
        return None

    @property
    def counting(self) -> str:
        """How prompts are counted: `"server:<kind>"` (exact, by the server) or
        `"estimate"` (fmai's tokenizer or estimate, corrected by reported usage)."""
        server = self._server_counts()
        return f"server:{server.kind}" if server is not None else "estimate"

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of `messages`: the server's own count when it offers one (see
        `count`), else fmai's count corrected by reported usage.

        Without a server count, the counter fits a fixed template overhead plus a per-token
        factor from each call's usage (see
        [`ChatCounter`][fmai_core.backends.tokens.ChatCounter]), never below the fit; before
        the first report it adds the first-call margin
        ([`FIRST_CALL_OVERHEAD`][fmai_core.backends.tokens.FIRST_CALL_OVERHEAD] and
        [`FIRST_CALL_FACTOR`][fmai_core.backends.tokens.FIRST_CALL_FACTOR]).
        """
        server = self._server_counts()
        if server is not None:
            return server.prompt(messages) + self._slack
        return self._counter(messages)

    def count_text(self, text: str) -> int:
        """Tokens of bare text (no template overhead), by the same count as `count_tokens`:
        a prompt's count is the sum of its messages' `count_text` and their fixed
        per-message and per-prompt costs."""
        server = self._server_counts()
        if server is not None:
            return server.text(text)
        return self._counter.count_text(text)

    @property
    def count_revision(self) -> int:
        """Changes whenever the count changes (the usage-fitted correction, or the server
        counter's slack), so counts cached before (by
        [`TokenCounter`][fmai_core.tokens.TokenCounter]) are recomputed."""
        if self._server_counter is not None:
            return -1 - self._slack
        return self._counter.revision

    def close(self) -> None:
        """Close the SDK's HTTP connections (the backend reopens them when used again)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def awarm(self) -> None:
        """Build the async client for the running event loop and load what its first
        request would import, sending nothing.

        The SDK imports its resources, its HTTP stack and their types on first use: some
        0.2 s of CPU that a server's first turn would spend on its event loop (measured
        under `fmai serve`). A server calls this as it starts instead.
        """
        self._create(self._async())

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

    def _error(
        self, exc: BaseException, retries: int | None = None, deadline: _Deadline | None = None
    ) -> FMAIError:
        """Translate an SDK or transport exception into an fmai error.

        `retries` is how many retries were made (default: `max_retries`); with a `deadline`
        that has run out, a timeout is blamed on `turn_timeout` rather than `timeout`.
        """
        if isinstance(exc, FMAIError):
            return exc
        sdk = self._sdk
        retries = self.max_retries if retries is None else retries
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        if deadline is not None and deadline.hit:  # cancelled at the deadline, however shown
            return self._past_deadline(detail, retries)
        where = self.base_url or f"the {self.provider} API"
        # A timeout while a stream is read surfaces as the HTTP library's own ReadTimeout.
        timeout = any("Timeout" in cls.__name__ for cls in type(exc).__mro__)
        if timeout and not isinstance(exc, sdk.APIStatusError):
            if deadline is not None and deadline.bit():
                return self._past_deadline(detail, retries)
            return BackendTimeoutError(
                f"{where} did not answer within timeout={self.timeout}s after "
                f"{retries} retries ({detail}). Raise `timeout` or try again later."
            )
        if isinstance(exc, sdk.AuthenticationError | sdk.PermissionDeniedError):
            return AuthenticationError(
                f"{where} rejected the API key ({detail}). Check api_key or "
                f"{' / '.join(self.key_env)}."
            )
        if isinstance(exc, sdk.RateLimitError):
            return RateLimitError(
                f"{where} kept answering 429 (rate limited) through {retries} "
                f"retries ({detail}). Wait, raise `max_retries`, or lower the request rate."
            )
        if isinstance(exc, sdk.APIConnectionError):
            return BackendError(
                f"Could not reach {where} ({detail}). Check base_url and the network."
            )
        if isinstance(exc, sdk.APIStatusError) and exc.status_code in _REJECTED:
            return RequestRejectedError(
                f"{where} rejected the request with HTTP {exc.status_code} ({detail}); it was "
                "not retried, since the same request would be refused again. Check the model "
                "name and the request's parameters."
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

    def _past_deadline(self, detail: str, retries: int | None = None) -> BackendTimeoutError:
        """The error for a call that could not finish within `turn_timeout`."""
        where = self.base_url or f"the {self.provider} API"
        made = "" if retries is None else f"; {retries} retries made"
        return BackendTimeoutError(
            f"The call to {where} did not finish within turn_timeout={self.turn_timeout:g}s "
            f"(all attempts and waits together{made}; last: {detail}). Raise `turn_timeout`, "
            "or try again later."
        )

    def _retry_wait(self, exc: BaseException, retries: int, deadline: _Deadline) -> float:
        """Seconds to wait before retrying after `exc`.

        Raises the fmai error instead when fmai does not retry: `exc` is not retryable, the
        retries are used up, or the wait is over `max_retry_after` or ends past the deadline.
        """
        if not self._retryable(exc) or retries >= self.max_retries:
            raise self._error(exc, retries, deadline) from None
        asked = _retry_after(exc)
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        if asked is not None and asked > 0:
            where = self.base_url or f"the {self.provider} API"
            status = getattr(exc, "status_code", None)
            kind = RateLimitError if status == 429 else BackendError
            what = f"{where} answered HTTP {status} and asked to wait {asked:g} s (Retry-After)"
            if asked > self.max_retry_after:
                raise kind(
                    f"{what}, more than max_retry_after={self.max_retry_after:g}s, so fmai "
                    f"did not wait ({detail}). Try again after {asked:g} s, lower the request "
                    "rate, or raise `max_retry_after`."
                ) from None
            left = deadline.left()
            if asked >= left:
                raise kind(
                    f"{what}, but only {max(left, 0.0):.2g} s of turn_timeout="
                    f"{self.turn_timeout:g}s were left, so fmai did not wait ({detail}). Try "
                    f"again after {asked:g} s, or raise `turn_timeout`."
                ) from None
            return asked
        wait = _backoff(retries)
        if wait >= deadline.left():
            err = self._error(exc, retries, deadline)
            if isinstance(err, BackendTimeoutError):
                raise self._past_deadline(detail, retries) from None
            raise type(err)(
                f"{err} No retry was made: its wait ({wait:.2g} s) would end past "
                f"turn_timeout={self.turn_timeout:g}s."
            ) from None
        return wait

    def _retryable(self, exc: BaseException) -> bool:
        sdk = self._sdk
        if isinstance(exc, sdk.APIStatusError):
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            should = str(headers.get("x-should-retry", "")).lower()
            if should in ("true", "false"):
                return should == "true"
            return exc.status_code in _RETRY_STATUS or exc.status_code >= 500
        return isinstance(exc, sdk.APIConnectionError)  # timeouts included

    def _options(self, deadline: _Deadline, retries: int) -> dict[str, Any]:
        """Per-attempt request options: the attempt's timeout, cut to the deadline."""
        return {
            "timeout": deadline.cap(self.timeout),
            # the SDK's own header, which its retries would send (its retries are off)
            "extra_headers": {"x-stainless-retry-count": str(retries)},
        }

    def _open(
        self, messages: Sequence[Message], params: dict[str, Any], stream: bool, deadline: _Deadline
    ) -> Any:
        """Send the request, retrying under `deadline`; returns the SDK's response."""
        request = self._request(messages, params, stream)
        retries = 0
        while True:
            try:
                return self._create(self._sync())(**request, **self._options(deadline, retries))
            except Exception as exc:
                wait = self._retry_wait(exc, retries, deadline)
            time.sleep(wait)
            retries += 1

    async def _aopen(
        self,
        messages: Sequence[Message],
        params: dict[str, Any],
        stream: bool,
        deadline: _Deadline,
    ) -> Any:
        """Async twin of `_open`, cut at the deadline exactly (Python 3.11+)."""
        request = self._request(messages, params, stream)
        retries = 0
        while True:
            try:
                create = self._create(self._async())
                async with deadline.scope():
                    return await create(**request, **self._options(deadline, retries))
            except Exception as exc:
                wait = self._retry_wait(exc, retries, deadline)
            await asyncio.sleep(wait)
            retries += 1

    def _stream_error(self, exc: BaseException, tracker: StreamTracker) -> FMAIError:
        """The error for a stream that failed after it started: never a normal return."""
        err = self._error(exc, deadline=tracker.deadline)
        if tracker.deadline.hit:
            return err
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
        """Send `messages` and return the whole reply (see `Backend.generate`).

        Retries and waits all fit in `turn_timeout` (see the class docs).
        """
        start = time.perf_counter()
        deadline = _Deadline(self.turn_timeout)
        try:
            resp = self._open(messages, params, False, deadline)
            return self._generation(messages, resp, start)
        except Exception as exc:
            raise self._error(exc, deadline=deadline) from None

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        """Yield text deltas as they arrive, then a chunk with the Generation.

        Raises a [`BackendError`][fmai_core.errors.BackendError] (never returns normally) when
        the stream breaks off before the provider's final chunk, and a
        [`BackendTimeoutError`][fmai_core.errors.BackendTimeoutError] when it runs past
        `turn_timeout`.
        """
        tracker = StreamTracker(self)
        deadline = tracker.deadline
        try:
            items = self._open(messages, params, True, deadline)
        except Exception as exc:
            raise self._error(exc, deadline=deadline) from None
        try:
            for item in items:
                text = self._delta(tracker, item)
                if tracker.finish is None and deadline.expired():
                    raise self._past_deadline(
                        f"the stream was cut after {len(tracker.parts)} chunks"
                    )
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
        deadline = _Deadline(self.turn_timeout)
        try:
            resp = await self._aopen(messages, params, False, deadline)
            return self._generation(messages, resp, start)
        except Exception as exc:
            raise self._error(exc, deadline=deadline) from None

    async def astream(
        self, messages: Sequence[Message], **params: Any
    ) -> AsyncIterator[StreamChunk]:
        """Async twin of `stream` (cut at `turn_timeout` exactly on Python 3.11+, stalls
        included)."""
        tracker = StreamTracker(self)
        deadline = tracker.deadline
        try:
            items = await self._aopen(messages, params, True, deadline)
        except Exception as exc:
            raise self._error(exc, deadline=deadline) from None
        try:
            chunks = items.__aiter__()
            while True:
                try:
                    async with deadline.scope():
                        item = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                if tracker.finish is None and deadline.expired():
                    raise self._past_deadline(
                        f"the stream was cut after {len(tracker.parts)} chunks"
                    )
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
        reused: int | None,
        completion: int | None,
        text: str,
    ) -> tuple[Usage, bool]:
        """Build the Usage; estimate what the provider did not report. Returns (usage, reported).

        Fields fmai had to estimate are named in `Usage.estimated`; a prompt counted by the
        server's own tokenizer is exact, not an estimate. `reused=None` (not reported)
        stays `None`, and `prefill_tokens` is then the whole prompt, marked estimated.
        """
        # what is not a token count (negative, fractional, not a number) is not reported,
        # nor is a count of 0 for text (servers that send usage as zeros): fitted, zeros
        # shrank every count (a 1,331-token prompt was counted 241 under max_tokens=300)
        prompt, reused, completion = map(token_count, (prompt, reused, completion))
        if prompt == 0 and any(m.content for m in messages):
            prompt = None
        if completion == 0 and text:
            completion = None
        reported = prompt is not None
        estimated: list[str] = []
        server = self._server_counter
        if prompt is None:
            prompt = self.count_tokens(messages)
            if server is None:
                estimated.append("prompt_tokens")
        elif server is not None:
            self._check_server_count(messages, prompt)
        else:
            if completion is not None:
                # the provider's own count of the reply, which the next prompt carries back
                self._counter.learn(text, completion)
            self._counter.observe(messages, prompt)
        if completion is None:
            completion = self.count_text(text)
            estimated.append("completion_tokens")
        if reused is None:
            prefill = prompt
            estimated.append("prefill_tokens")
        else:
            reused = max(0, min(reused, prompt))
            prefill = prompt - reused
            if "prompt_tokens" in estimated:
                estimated.append("prefill_tokens")
        usage = Usage(
            prompt_tokens=prompt,
            reused_tokens=reused,
            prefill_tokens=prefill,
            completion_tokens=completion,
            estimated=tuple(estimated),
        )
        return usage, reported

    def _check_server_count(self, messages: Sequence[Message], reported: int) -> None:
        """A server whose usage exceeds its own count gets that much slack on every count."""
        server = self._server_counter
        if server is None:
            return
        try:
            counted = server.prompt(messages)
        except FMAIError:
            return
        if reported > counted + self._slack:
            _log.warning(
                "fmai: %s reported %d prompt tokens where its own count was %d; adding %d "
                "tokens to every count from now on",
                self.base_url,
                reported,
                counted,
                reported - counted,
            )
            self._slack = reported - counted


class StreamTracker:
    """Collects a streamed reply and refuses to finish one that never completed."""

    def __init__(self, backend: HostedBackend) -> None:
        self.backend = backend
        self.deadline = _Deadline(backend.turn_timeout)
        self.start = time.perf_counter()
        self.first: float | None = None
        self.parts: list[str] = []
        self.finish: str | None = None
        self.prompt: int | None = None
        self.reused: int | None = None
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
        extra.setdefault("counting", self.backend.counting)
        return Generation(
            text=text,
            usage=usage,
            latency_ms=ms,
            ttft_ms=ttft,
            finish_reason=self.finish,
            extra=extra,
        )


class _Deadline:
    """The end of one turn on the monotonic clock (`None`: no deadline)."""

    __slots__ = ("cut", "end", "hit")

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds
        self.cut = False  # an attempt's timeout was shortened to the deadline
        self.hit = False  # an async call was cancelled at the deadline

    def left(self) -> float:
        """Seconds left (infinite without a deadline; negative once past)."""
        return math.inf if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def bit(self) -> bool:
        """Whether a timeout now is the deadline's doing (not the per-attempt `timeout`)."""
        return self.hit or self.cut or self.expired()

    def cap(self, timeout: float) -> float:
        """`timeout` cut to what is left (at least a millisecond, so it stays valid)."""
        left = self.left()
        if left < timeout:
            self.cut = True
            return max(0.001, left)
        return timeout

    @contextlib.asynccontextmanager
    async def scope(self) -> AsyncIterator[None]:
        """Cancel what runs inside at the deadline, in the running task (Python 3.11+: a
        `TimeoutError`, or whatever the SDK makes of the cancellation; `hit` tells).

        On Python 3.10 this does nothing: attempts are bounded by their cut `timeout`.
        """
        timeout = getattr(asyncio, "timeout", None)
        if self.end is None or timeout is None:
            yield
            return
        cm = timeout(max(0.0, self.left()))
        try:
            async with cm:
                yield
        finally:
            if cm.expired():
                self.hit = True


def _seconds(name: str, value: float, zero: bool = False) -> float:
    """Validate a duration in seconds: a finite number, > 0 (>= 0 with `zero`)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}."
        )
    return float(value)


def _backoff(retries: int) -> float:
    """The SDKs' backoff: 0.5 s doubling up to 8 s, minus up to 25% jitter."""
    wait = min(_BACKOFF_FIRST * 2.0 ** min(retries, 16), _BACKOFF_MAX)
    return wait * (1 - 0.25 * random.random())


def _retry_after(exc: BaseException) -> float | None:
    """Seconds a response asked to wait (`retry-after-ms`, `Retry-After`: seconds or a date)."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return when.timestamp() - time.time()
    return seconds if not math.isnan(seconds) else None
