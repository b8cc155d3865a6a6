"""`AnthropicBackend`: Claude models through the Messages API, on the official SDK.

Install with `pip install 'fmai-core[anthropic]'`.
"""

from __future__ import annotations

import inspect
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
from fmai_core.backends.tokens import TextCount
from fmai_core.errors import BackendError
from fmai_core.messages import Message

__all__ = ["AnthropicBackend", "to_anthropic"]

_CACHE = {"type": "ephemeral"}


def to_anthropic(messages: Sequence[Message], cache_control: bool = True) -> dict[str, Any]:
    """Convert fmai messages to the Messages API's `system` and `messages` fields.

    System messages are joined into `system`; consecutive messages of one role are merged
    (the API wants user and assistant to alternate, starting with user). With
    `cache_control`, prompt-cache breakpoints go on the system prompt, on the last message and
    on the user message before it, so each turn reads the prefix the previous turn wrote.
    """
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        if turns and turns[-1]["role"] == m.role:
            turns[-1]["content"] += "\n\n" + m.content
        else:
            turns.append({"role": m.role, "content": m.content})
    if turns and turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": "(conversation continues)"})
    body: dict[str, Any] = {"messages": turns}
    if system:
        body["system"] = [{"type": "text", "text": system}] if cache_control else system
    if cache_control:
        if system:
            body["system"][0]["cache_control"] = _CACHE
        users = [i for i, t in enumerate(turns) if t["role"] == "user"]
        for i in {len(turns) - 1, *users[-2:-1]} if turns else ():
            turns[i]["content"] = [
                {"type": "text", "text": turns[i]["content"], "cache_control": _CACHE}
            ]
    return body


class AnthropicBackend(HostedBackend):
    """A Claude model through Anthropic's Messages API.

    The system prompt goes in the API's `system` field; cache breakpoints mark the stable
    prefix (see [`to_anthropic`][fmai_core.backends.anthropic_messages.to_anthropic]); the
    provider's `cache_read_input_tokens` become `Usage.reused_tokens`, and `prompt_tokens`
    is input plus cache-read plus cache-write tokens.

    Args:
        model: The model name, e.g. `"claude-sonnet-4-5"`.
        api_key: The key; else `$ANTHROPIC_API_KEY` (or `api_key_env`). Never logged or stored.
        base_url: Another endpoint speaking the Messages API (a proxy, a gateway).
        timeout: Seconds per attempt (for a stream: the longest wait between events), cut to
            what is left of `turn_timeout`.
        max_retries: Retries after 429, 5xx (529 overloaded included), timeouts and connection
            errors, with backoff honouring `Retry-After`.
        turn_timeout: Seconds the whole call may take: every attempt, every wait between
            attempts and, for a stream, the stream to its end (default 120; `None`: no
            deadline). Past it: `BackendTimeoutError`. Raise it for long streamed replies.
        max_retry_after: The longest `Retry-After` honoured (default 30 s). A server asking
            for longer, or for a wait past `turn_timeout`, gets no retry: the call raises at
            once (`RateLimitError` for a 429), saying how long the server asked to wait.
        tokenizer: How to count before a call; Claude's tokenizer is not public, so the
            default is the calibrated estimate, corrected by each call's reported usage.
        cache_control: Set prompt-cache breakpoints (on by default).
        client_options: More keyword arguments for `anthropic.Anthropic(...)` (its
            `max_retries` is always 0: fmai retries itself, under `turn_timeout`).
        count_per_text: Count each text the provider has counted (a reply's
            `completion_tokens`, a message a report pins down) by the provider's own count,
            estimating only new ones (see
            [`ChatCounter`][fmai_core.backends.tokens.ChatCounter]); `False`: the affine
            fit alone, which does not depend on what this process has seen.

    Example:
        ```python
        from fmai_core import FiniteMemoryLLM
        from fmai_core.backends import AnthropicBackend

        llm = FiniteMemoryLLM(AnthropicBackend("claude-sonnet-4-5"), max_tokens=16000,
                              system_prompt="You are terse.")
        print(llm.chat("Remember: the door code is 4417.").response)
        ```
    """

    provider: ClassVar[str] = "anthropic"
    sdk_name: ClassVar[str] = "anthropic"
    extra: ClassVar[str] = "anthropic"
    key_env: ClassVar[tuple[str, ...]] = ("ANTHROPIC_API_KEY",)
    _client_class: ClassVar[str] = "Anthropic"
    _async_client_class: ClassVar[str] = "AsyncAnthropic"

    def __init__(
        self,
        model: str,
        api_key: str | None = None,
        *,
        api_key_env: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        turn_timeout: float | None = DEFAULT_TURN_TIMEOUT,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        tokenizer: str | TextCount | None = None,
        cache_control: bool = True,
        client_options: dict[str, Any] | None = None,
        count_per_text: bool = True,
    ) -> None:
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
            count_per_text=count_per_text,
        )
        self.cache_control = cache_control
        # Recent SDKs dropped `temperature` / `top_p` (newer models reject them): send them
        # only where the installed SDK still takes them.
        create = self._sdk.resources.messages.Messages.create
        self._sampling = "temperature" in inspect.signature(create).parameters

    def _request(
        self, messages: Sequence[Message], params: dict[str, Any], stream: bool
    ) -> dict[str, Any]:
        req: dict[str, Any] = {
            "model": self.model,
            "max_tokens": int(params.get("max_new_tokens", 256)),
            **to_anthropic(messages, self.cache_control),
        }
        for key in ("temperature", "top_p"):
            if params.get(key) is not None and self._sampling:
                req[key] = float(params[key])
        stop = params.get("stop")
        if stop:  # one string or several (a string is one sequence, not its characters)
            req["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if stream:
            req["stream"] = True
        return req

    def _generation(self, messages: Sequence[Message], resp: Any, start: float) -> Generation:
        try:
            text = "".join(b.text for b in resp.content if getattr(b, "type", "") == "text")
            finish = resp.stop_reason or "end_turn"
        except (AttributeError, TypeError) as exc:
            raise BackendError(
                f"The Messages API returned a message without content ({type(exc).__name__}). "
                "Check base_url."
            ) from None
        prompt, reused, extra = _read_usage(resp.usage)
        usage, reported = self._usage(messages, prompt, reused, resp.usage.output_tokens, text)
        ms = (time.perf_counter() - start) * 1000
        extra |= {"provider": self.provider, "usage_reported": reported, "model": resp.model}
        return Generation(text, usage, ms, ms, finish, extra)

    def _create(self, client: Any) -> Any:
        return client.messages.create

    def _delta(self, tracker: StreamTracker, event: Any) -> str:
        kind = getattr(event, "type", "")
        if kind == "message_start":
            tracker.prompt, tracker.reused, extra = _read_usage(event.message.usage)
            tracker.extra.update(extra)
        elif kind == "content_block_delta" and getattr(event.delta, "type", "") == "text_delta":
            return tracker.add(event.delta.text)
        elif kind == "message_delta":
            tracker.completion = event.usage.output_tokens
            tracker.extra["stop_reason"] = event.delta.stop_reason or "end_turn"
        elif kind == "message_stop":
            tracker.finish = str(tracker.extra.pop("stop_reason", "end_turn"))
        elif kind == "error":
            raise BackendError(f"The Messages API stream reported an error: {event}. Retry.")
        return ""


def _read_usage(u: Any) -> tuple[int, int | None, dict[str, Any]]:
    """(prompt, cache-read, extra) from Anthropic usage: prompt = input + read + written.

    The cache read is `None` when the usage has no `cache_read_input_tokens` (some
    Anthropic-compatible servers leave it out): not reported, as distinct from 0.
    """
    read = getattr(u, "cache_read_input_tokens", None)
    written = getattr(u, "cache_creation_input_tokens", None) or 0
    prompt = (u.input_tokens or 0) + (read or 0) + written
    reused = None if read is None else int(read)
    return prompt, reused, {"cache_write_tokens": int(written)}
