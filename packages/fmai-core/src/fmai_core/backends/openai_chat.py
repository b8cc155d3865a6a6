"""`OpenAIBackend`: any OpenAI-compatible chat-completions endpoint, on the official SDK.

Install with `pip install 'fmai-core[openai]'`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

from fmai_core.backend import Generation
from fmai_core.backends._hosted import (
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_TURN_TIMEOUT,
    HostedBackend,
    StreamTracker,
)
from fmai_core.backends.server_count import ServerCounter
from fmai_core.backends.tokens import TextCount
from fmai_core.errors import BackendError
from fmai_core.messages import Message

__all__ = ["OpenAIBackend"]


class OpenAIBackend(HostedBackend):
    """A chat model behind an OpenAI-compatible `/chat/completions` endpoint.

    Messages go out as real chat messages in prompt order, so the provider's prefix cache
    sees the stable head of fmai's layout unchanged from turn to turn; its cached prompt
    tokens (`usage.prompt_tokens_details.cached_tokens`) become `Usage.reused_tokens`.

    Args:
        model: The provider's model name (`"gpt-4o-mini"`, `"deepseek-chat"`, ...).
        base_url: The endpoint root, e.g. `"http://localhost:8000/v1"` (vLLM),
            `"http://localhost:11434/v1"` (Ollama), `"https://api.deepseek.com"`. `None` is
            OpenAI.
        api_key: The key; else `$OPENAI_API_KEY` (or `api_key_env`). With `base_url` and no
            key anywhere, a placeholder is sent (local servers ignore it). Never logged or
            stored in checkpoints.
        api_key_env: Read the key from this environment variable instead.
        timeout: Seconds per attempt (for a stream: the longest wait between chunks), cut to
            what is left of `turn_timeout`.
        max_retries: Retries after 429, 5xx, timeouts and connection errors, with backoff
            honouring `Retry-After`.
        turn_timeout: Seconds the whole call may take: every attempt, every wait between
            attempts and, for a stream, the stream to its end (default 120; `None`: no
            deadline). Past it: `BackendTimeoutError`. Raise it for long streamed replies.
        max_retry_after: The longest `Retry-After` honoured (default 30 s). A server asking
            for longer, or for a wait past `turn_timeout`, gets no retry: the call raises at
            once (`RateLimitError` for a 429), saying how long the server asked to wait.
        tokenizer: How to count tokens before a call (see
            [`resolve_counter`][fmai_core.backends.tokens.resolve_counter]).
        max_tokens_param: The request field for the reply limit: `"max_completion_tokens"`
            (OpenAI's current name; the default without `base_url`) or `"max_tokens"` (what
            older compatible servers read; the default with `base_url`).
        stream_usage: Ask for usage in the stream's last chunk (`stream_options`); turn off
            for servers that reject it.
        client_options: More keyword arguments for `openai.OpenAI(...)` (its `max_retries`
            is always 0: fmai retries itself, under `turn_timeout`).
        count: How prompts are counted before a call. `"server"`: by the server's own
            tokenizer and chat template (llama.cpp's `/apply-template` + `/tokenize`, vLLM's
            `/tokenize`; see [`server_count`][fmai_core.backends.server_count]), exact, or
            a `ConfigurationError` if it has none. `"auto"` (the default with `base_url`):
            the server's count when the first count's probe finds it, else `"estimate"`
            (logged on the `fmai` logger). `"estimate"` (the default for OpenAI itself):
            `tokenizer`'s count, corrected by reported usage, with the first-call margin
            ([`FIRST_CALL_OVERHEAD`][fmai_core.backends.tokens.FIRST_CALL_OVERHEAD] tokens
            plus x[`FIRST_CALL_FACTOR`][fmai_core.backends.tokens.FIRST_CALL_FACTOR], or
            x1.1 with an exact tokenizer) until the first report.
        count_per_text: Count each text the provider has counted (a reply's
            `completion_tokens`, a message a report pins down) by the provider's own count,
            estimating only new ones (see
            [`ChatCounter`][fmai_core.backends.tokens.ChatCounter]); `False`: the affine
            fit alone, which does not depend on what this process has seen.

    Example:
        ```python
        from fmai_core import FiniteMemoryLLM
        from fmai_core.backends import OpenAIBackend

        llm = FiniteMemoryLLM(OpenAIBackend("gpt-4o-mini"), max_tokens=8000)
        print(llm.chat("Hi! My sister is called Ada.").response)
        ```
    """

    provider: ClassVar[str] = "openai"
    sdk_name: ClassVar[str] = "openai"
    extra: ClassVar[str] = "openai"
    key_env: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    _client_class: ClassVar[str] = "OpenAI"
    _async_client_class: ClassVar[str] = "AsyncOpenAI"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        turn_timeout: float | None = DEFAULT_TURN_TIMEOUT,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        tokenizer: str | TextCount | None = None,
        max_tokens_param: str | None = None,
        stream_usage: bool = True,
        client_options: dict[str, Any] | None = None,
        count: str | None = None,
        count_per_text: bool = True,
    ) -> None:
        if count is None:
            count = "auto" if base_url is not None else "estimate"
        super().__init__(
            model,
            api_key=api_key,
            api_key_env=api_key_env,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            turn_timeout=turn_timeout,
            max_retry_after=max_retry_after,
            tokenizer=tokenizer,
            client_options=client_options,
            count=count,
            count_per_text=count_per_text,
        )
        default = "max_tokens" if base_url is not None else "max_completion_tokens"
        self.max_tokens_param = max_tokens_param or default
        self.stream_usage = stream_usage

    # -- request and response -----------------------------------------------------------
    def _request(
        self, messages: Sequence[Message], params: dict[str, Any], stream: bool
    ) -> dict[str, Any]:
        req: dict[str, Any] = {
            "model": self.model,
            # The messages travel in `extra_body`, which the SDK merges into the JSON body
            # as it is: given as `messages=`, each one is walked through the SDK's TypedDict
            # transform, a no-op for plain role/content strings that cost ~9 ms a call on a
            # long history (measured under `fmai serve`). The body sent is the same.
            "messages": [],
            "extra_body": {"messages": [m.to_dict() for m in messages]},
            self.max_tokens_param: int(params.get("max_new_tokens", 256)),
            "temperature": float(params.get("temperature", 0.0)),
        }
        for key in ("top_p", "stop", "seed"):
            if params.get(key) is not None:
                req[key] = params[key]
        if stream:
            req["stream"] = True
            if self.stream_usage:
                req["stream_options"] = {"include_usage": True}
        return req

    def _generation(self, messages: Sequence[Message], resp: Any, start: float) -> Generation:
        try:
            choice = resp.choices[0]
            text = choice.message.content or ""
            finish = choice.finish_reason or "stop"
        except (AttributeError, IndexError, TypeError) as exc:
            raise BackendError(
                f"{self.base_url or 'OpenAI'} returned a completion without a message "
                f"({type(exc).__name__}). Check that base_url is an OpenAI-compatible server."
            ) from None
        u = getattr(resp, "usage", None)
        prompt, completion, reused = _read_usage(u)
        usage, reported = self._usage(messages, prompt, reused, completion, text)
        ms = (time.perf_counter() - start) * 1000
        extra = {
            "provider": self.provider,
            "usage_reported": reported,
            "model": resp.model,
            "counting": self.counting,
        }
        return Generation(text, usage, ms, ms, finish, extra)

    def _create(self, client: Any) -> Any:
        return client.chat.completions.create

    def _make_server_counter(self) -> ServerCounter | None:
        if self.base_url is None:
            return None
        probe_timeout = min(self.timeout, 10.0)
        return ServerCounter(self.base_url, self.model, self._api_key, timeout=probe_timeout)

    def _delta(self, tracker: StreamTracker, chunk: Any) -> str:
        if getattr(chunk, "usage", None) is not None:
            tracker.prompt, tracker.completion, tracker.reused = _read_usage(chunk.usage)
        text = ""
        for choice in chunk.choices or ():
            if choice.delta is not None and choice.delta.content:
                text += choice.delta.content
            if choice.finish_reason:
                tracker.finish = choice.finish_reason
        return tracker.add(text)


def _read_usage(u: Any) -> tuple[int | None, int | None, int | None]:
    """(prompt, completion, cached) from an OpenAI usage object (None where absent).

    `cached` is `None` when the server sent no `prompt_tokens_details.cached_tokens`
    (vLLM without `--enable-prompt-tokens-details`, llama-cpp-python, Ollama): not
    reported, as distinct from 0.
    """
    if u is None:
        return None, None, None
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)
    return u.prompt_tokens, u.completion_tokens, None if cached is None else int(cached)
