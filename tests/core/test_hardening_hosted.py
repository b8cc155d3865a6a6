"""Hardening of the hosted backends (issue 11): turn deadlines, Retry-After caps, counting.

Everything runs against the real loopback server in `tests/core/fakeserver.py` with the
official SDKs; timeouts are fractions of a second, so no test waits long.
"""

from __future__ import annotations

import email.utils
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakeserver import FakeProvider, _text_of

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.errors import (
    BackendError,
    BackendTimeoutError,
    ConfigurationError,
    MessageTooLongError,
    RateLimitError,
)

KEY = "sk-test-key"
MSGS = [Message("system", "Be brief."), Message("user", "hello there friend")]
PROVIDERS = ["openai", "anthropic"]


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with FakeProvider(api_key=KEY) as fp:
        yield fp


def make(provider: str, server: FakeProvider, **kw: Any) -> Any:
    """An OpenAIBackend or AnthropicBackend on the fake server (skips without the SDK)."""
    pytest.importorskip(provider, reason=f"needs the SDK: pip install 'fmai-core[{provider}]'")
    from fmai_core.backends import AnthropicBackend, OpenAIBackend

    if provider == "openai":
        return OpenAIBackend("fake-model", base_url=server.openai_url, api_key=KEY, **kw)
    return AnthropicBackend("claude-fake", base_url=server.url, api_key=KEY, **kw)


def within(seconds: float, fn: Callable[[], Any]) -> tuple[float, BaseException | None]:
    """Run `fn` in a daemon thread; fail if it is still running after `seconds`.

    Returns (elapsed seconds, the exception it raised or None). A watchdog rather than a
    plain call, so that a regression (a turn held for minutes) fails fast instead of hanging.
    """
    out: list[BaseException | None] = [None]

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            out[0] = exc

    start = time.perf_counter()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    elapsed = time.perf_counter() - start
    if t.is_alive():
        pytest.fail(f"the call was still running after {seconds} s")
    return elapsed, out[0]


# -- defect 7: a per-turn deadline over all retries, and a cap on Retry-After -------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_beyond_the_cap_fails_at_once(provider: str, server: FakeProvider) -> None:
    # The reported case: a 429 with Retry-After: 100 held a turn for 200 s. With the default
    # settings fmai now refuses to wait that long and says so.
    server.retry_after = "100"
    server.fail_next("429", times=3)
    b = make(provider, server)
    _, err = within(5, lambda: b.generate(MSGS))
    b.close()
    assert isinstance(err, RateLimitError)
    assert "asked to wait 100 s" in str(err)
    assert "max_retry_after=30" in str(err)
    assert len(server.requests) == 1  # it did not wait: no retry was sent


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_as_an_http_date_is_capped_too(provider: str, server: FakeProvider) -> None:
    server.retry_after = email.utils.formatdate(time.time() + 100, usegmt=True)
    server.fail_next("429", times=3)
    b = make(provider, server, max_retry_after=5)
    _, err = within(5, lambda: b.generate(MSGS))
    b.close()
    assert isinstance(err, RateLimitError)
    assert "max_retry_after=5" in str(err)
    assert len(server.requests) == 1  # it did not wait: no retry was sent


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_within_the_cap_is_honoured(provider: str, server: FakeProvider) -> None:
    server.retry_after = "0.2"
    server.fail_next("429")
    b = make(provider, server, max_retry_after=0.5)
    start = time.perf_counter()
    gen = b.generate(MSGS)
    elapsed = time.perf_counter() - start
    b.close()
    assert gen.text == "reply to: hello there friend"
    assert elapsed >= 0.2
    assert [h["x-stainless-retry-count"] for h in server.headers] == ["0", "1"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_beyond_the_turn_deadline_stops_retrying(
    provider: str, server: FakeProvider
) -> None:
    # Each wait is under the cap, but the second would end past the turn's deadline: the first
    # 1 s wait fits in 1.6 s if the first request takes under 0.6 s (it does, even on a loaded
    # machine), the second can never fit (two waits are 2 s).
    server.retry_after = "1"
    server.fail_next("429", times=5)
    b = make(provider, server, max_retries=5, turn_timeout=1.6)
    elapsed, err = within(8, lambda: b.generate(MSGS))
    b.close()
    assert isinstance(err, RateLimitError)
    assert "asked to wait 1 s" in str(err)
    assert "turn_timeout=1.6" in str(err)
    # One wait, not two (a second wait alone would put it past 2 s); the request count below
    # is the exact check.
    assert elapsed < 2.0
    assert len(server.requests) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_turn_timeout_bounds_all_attempts(provider: str, server: FakeProvider) -> None:
    # A server that never answers in time: each attempt alone may take 10 s, five retries
    # are allowed, yet the whole turn ends at its 0.4 s deadline.
    server.slow_s = 3.0
    server.fail_next("slow", times=6)
    b = make(provider, server, timeout=10.0, max_retries=5, turn_timeout=0.4)
    elapsed, err = within(5, lambda: b.generate(MSGS))
    b.close()
    assert isinstance(err, BackendTimeoutError)
    assert "turn_timeout=0.4" in str(err)
    assert 0.35 < elapsed < 1.0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_no_backoff_wait_runs_past_the_deadline(provider: str, server: FakeProvider) -> None:
    # 5xx without Retry-After: backoff of about 0.5 s, then 1 s. The first retry fits in
    # 0.9 s, the second would not, so the call stops after two attempts, well inside 0.9 s.
    server.fail_next("500", times=10)
    b = make(provider, server, max_retries=10, turn_timeout=0.9)
    elapsed, err = within(5, lambda: b.generate(MSGS))
    b.close()
    assert type(err) is BackendError
    assert "HTTP 500" in str(err)
    assert "turn_timeout=0.9" in str(err)
    assert len(server.requests) == 2
    assert elapsed < 0.9


@pytest.mark.parametrize("provider", PROVIDERS)
def test_turn_timeout_bounds_a_stream_that_does_not_start(
    provider: str, server: FakeProvider
) -> None:
    server.fail_next("slow", times=6)
    b = make(provider, server, timeout=10.0, max_retries=5, turn_timeout=0.4)
    elapsed, err = within(5, lambda: list(b.stream(MSGS)))
    b.close()
    assert isinstance(err, BackendTimeoutError)
    assert "turn_timeout=0.4" in str(err)
    assert elapsed < 1.0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_turn_timeout_bounds_a_stream_that_stalls(provider: str, server: FakeProvider) -> None:
    # Two deltas, then silence: the per-read `timeout` (10 s) would wait; the deadline won't.
    server.fail_next("stall")
    b = make(provider, server, timeout=10.0, turn_timeout=0.4)
    elapsed, err = within(5, lambda: list(b.stream(MSGS)))
    b.close()
    assert isinstance(err, BackendTimeoutError)
    assert elapsed < 1.0


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_turn_timeout_bounds_async_calls(provider: str, server: FakeProvider) -> None:
    b = make(provider, server, timeout=10.0, max_retries=5, turn_timeout=0.4)
    server.fail_next("slow")  # the one attempt that fits in the deadline
    start = time.perf_counter()
    with pytest.raises(BackendTimeoutError, match=r"turn_timeout=0\.4"):
        await b.agenerate(MSGS)
    assert time.perf_counter() - start < 1.0
    server.fail_next("stall")
    start = time.perf_counter()
    with pytest.raises(BackendTimeoutError):
        async for _ in b.astream(MSGS):
            pass
    assert time.perf_counter() - start < 1.0
    server.retry_after = "100"
    server.fail_next("429")
    start = time.perf_counter()
    with pytest.raises(RateLimitError, match="asked to wait 100 s"):
        await b.agenerate(MSGS)
    assert time.perf_counter() - start < 1.0
    await b.aclose()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_turn_past_its_deadline_leaves_memory_unchanged(
    provider: str, server: FakeProvider
) -> None:
    b = make(provider, server, timeout=10.0, turn_timeout=0.4)
    llm = FiniteMemoryLLM(b, policy="sliding", max_tokens=400, max_new_tokens=40)
    llm.chat("My sister is called Ada.")
    before = llm.context("probe")
    server.fail_next("stall")
    with pytest.raises(BackendError):
        for _ in llm.stream("This stream stalls."):
            pass
    server.retry_after = "100"
    server.fail_next("429")
    with pytest.raises(RateLimitError):
        llm.chat("This one is rate limited.")
    assert llm.context("probe") == before
    assert llm.stats.turns == 1
    b.close()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    "kw",
    [
        {"turn_timeout": 0},
        {"turn_timeout": -1.0},
        {"turn_timeout": float("nan")},
        {"turn_timeout": float("inf")},
        {"max_retry_after": -1},
        {"max_retry_after": float("nan")},
        {"timeout": 0},
        {"max_retries": -1},
        {"max_retries": True},
    ],
)
def test_bad_deadline_settings_are_configuration_errors(
    provider: str, server: FakeProvider, kw: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        make(provider, server, **kw)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_no_turn_deadline_when_turned_off(provider: str, server: FakeProvider) -> None:
    b = make(provider, server, turn_timeout=None)
    assert b.turn_timeout is None
    assert b.generate(MSGS).text == "reply to: hello there friend"
    b.close()


# -- defect 11: one token count throughout, fitted from usage --------------------------------


def _scaled_server(factor: float, overhead: int = 0) -> FakeProvider:
    """A server whose usage reports `overhead + factor x` fmai's own estimate of a prompt."""
    from fmai_core.backends.tokens import ChatCounter, estimate_tokens

    estimate = ChatCounter(estimate_tokens)

    def count(msgs: list[dict[str, str]]) -> int:
        raw = estimate.raw([Message(m["role"], m["content"]) for m in msgs])
        return overhead + math.ceil(factor * raw)

    return FakeProvider(api_key=KEY, prompt_count=count)


def _evictions(provider: str, factor: float, max_tokens: int, max_new_tokens: int) -> list[int]:
    """Run 60 sliding turns; return the turns that evicted (asserting the server's budget)."""
    with _scaled_server(factor) as server:
        b = make(provider, server, tokenizer="estimate")
        llm = FiniteMemoryLLM(
            b, policy="sliding", max_tokens=max_tokens, max_new_tokens=max_new_tokens
        )
        turns = []
        for i in range(60):
            r = llm.chat(f"Turn {i}: the quick brown fox number {i} jumps over the lazy dog again.")
            assert r.stats.prompt_tokens + max_new_tokens <= max_tokens  # the server's count
            if r.stats.evicted_tokens:
                turns.append(i)
        b.close()
    return turns


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sliding_evicts_in_blocks_when_the_provider_counts_more(provider: str) -> None:
    # Reported: with usage at 1.5x fmai's estimate, the correction scaled count_tokens but not
    # count_text, so segment sizes and the final check disagreed and sliding evicted on 49 of
    # 60 turns. Exact counting (a server that agrees with fmai) at a budget 1.5x smaller is the
    # same conversation scaled: it evicts in blocks, and so must the corrected count.
    exact = _evictions(provider, 1.0, max_tokens=600, max_new_tokens=40)
    scaled = _evictions(provider, 1.5, max_tokens=900, max_new_tokens=60)
    assert 8 <= len(exact) <= 16  # blocks: about one eviction every 4 turns
    assert abs(len(scaled) - len(exact)) <= 2, (exact, scaled)
    # No two evictions on consecutive turns once the correction is learned.
    assert all(b - a > 1 for a, b in zip(scaled[1:], scaled[2:])), scaled


@pytest.mark.parametrize("provider", PROVIDERS)
def test_count_text_agrees_with_count_tokens_after_learning(
    provider: str, server: FakeProvider
) -> None:
    with _scaled_server(1.5) as scaled:
        b = make(provider, scaled, tokenizer="estimate")
        b.generate([Message("user", "word " * 40)])
        b.generate([Message("user", "word " * 200)])
        empty = b.count_tokens([Message("user", "")])
        for text in ["hello", "one two three four five", "word " * 300, "Ünïcødé ✓ 12345"]:
            assert b.count_tokens([Message("user", text)]) - empty == b.count_text(text), text
        b.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_count_is_fitted_as_template_overhead_plus_text(provider: str) -> None:
    # A server with a default system prompt of 40 tokens and a tokenizer 0.6x fmai's estimate:
    # one multiplier learned from a short first prompt (here about 2x) over-counts long ones
    # about 3x as much as needed; the affine fit is within 5% of the server on short and long.
    from fmai_core.backends.tokens import ChatCounter, estimate_tokens

    estimate = ChatCounter(estimate_tokens)
    with _scaled_server(0.6, overhead=40) as server:
        b = make(provider, server, tokenizer="estimate")
        for n in (5, 80, 20, 160, 40):
            b.generate([Message("user", "word " * n)])
        for n in (3, 50, 120, 240):
            msgs = [Message("user", "word " * n)]
            truth = 40 + math.ceil(0.6 * estimate.raw(msgs))
            assert truth <= b.count_tokens(msgs) <= truth * 1.05, n
        b.close()


def test_affine_fit_ignores_an_outlier() -> None:
    from fmai_core.backends.tokens import ChatCounter

    counter = ChatCounter(lambda t: len(t.split()))
    for n in (10, 40, 80, 120, 200):
        msgs = [Message("user", "w " * n)]
        counter.observe(msgs, 30 + 2 * counter.raw(msgs))
    outlier = [Message("user", "w " * 60)]
    counter.observe(outlier, 5000)  # e.g. one request that carried a large tool schema
    for n in (20, 100, 300):
        msgs = [Message("user", "w " * n)]
        assert counter(msgs) == 30 + 2 * counter.raw(msgs)
    # and count_text uses the same factor
    assert counter.count_text("a b c") == 6


# -- defect 11: TokenCounter is shared with abandoned policy workers --------------------------


class _WordBackend:
    """A counting-only backend: one token per word; `count_revision` flips the factor."""

    def __init__(self) -> None:
        self.factor = 1
        self.count_revision = 0

    def count_text(self, text: str) -> int:
        return self.factor * len(text.split())

    def count_tokens(self, messages: Any) -> int:
        return sum(self.count_text(m.content) + 3 * self.factor for m in messages) + 2


class _FlippingBackend(_WordBackend):
    """A `_WordBackend` whose factor (1 or 2) flips every `every` counts, on the counting thread.

    The correction changes while other threads count, paced by the counts themselves rather
    than by a sleeping thread.
    """

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self.flipping = True
        self._counts = itertools.count(1)

    def count_text(self, text: str) -> int:
        n = super().count_text(text)
        if self.flipping and next(self._counts) % self.every == 0:
            self.factor = 3 - self.factor
            self.count_revision += 1
        return n


def _hammer(counter: Any, texts: list[str], threads: int, rounds: int) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(seed: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                text = texts[(seed * 7 + i * 13) % len(texts)]
                n = counter.text(text)
                if n not in (len(text.split()), 2 * len(text.split())):
                    raise AssertionError(f"{text!r} counted {n}")
                counter.message(text)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def test_token_counter_is_safe_to_share_between_threads() -> None:
    # A small LRU under many threads: before, a hit's move_to_end could race another
    # thread's eviction of the same key (KeyError), and popitem could hit an empty cache.
    import sys

    from fmai_core.tokens import TokenCounter

    backend = _WordBackend()
    counter = TokenCounter(backend, cache_size=4)  # type: ignore[arg-type]
    texts = [" ".join(["w"] * n) for n in range(1, 41)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        errors = _hammer(counter, texts, threads=16, rounds=3000)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    assert all(counter.text(t) == len(t.split()) for t in texts)  # against the reference
    assert counter.message_overhead == 3
    assert len(counter._cache) <= 4


def test_token_counter_remeasures_safely_when_counting_changes() -> None:
    # The correction changes under running threads: every count is one of the two, and once
    # the threads are done, the cache and the overheads all belong to the current revision.
    import sys

    from fmai_core.tokens import TokenCounter

    backend = _FlippingBackend(every=16)
    counter = TokenCounter(backend, cache_size=16)  # type: ignore[arg-type]
    texts = [" ".join(["w"] * n) for n in range(1, 41)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        errors = _hammer(counter, texts, threads=8, rounds=1500)
    finally:
        sys.setswitchinterval(interval)
    assert backend.count_revision > 100  # the correction changed often under the threads
    backend.flipping = False
    backend.factor = 2
    backend.count_revision += 1
    assert not errors, errors[:3]
    assert all(counter.text(t) == 2 * len(t.split()) for t in texts)
    assert counter.message_overhead == 6


# -- a request the provider refuses as invalid is not retried ------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_rejected_request_is_not_retried(provider: str, server: FakeProvider) -> None:
    from fmai_core.errors import RequestRejectedError

    b = make(provider, server, max_retries=2)
    server.fail_next("400", 3)
    with pytest.raises(RequestRejectedError, match=r"HTTP 400.*not retried"):
        b.generate(MSGS)
    assert len(server.requests) == 1  # the same request would be refused again
    server._faults.clear()
    server.fail_next("500", 1)  # a server error is still retried
    assert b.generate(MSGS).text == "reply to: hello there friend"
    b.close()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("reported", [-1000, 12.5])
def test_usage_that_is_not_a_token_count_is_estimated_and_the_checkpoint_loads(
    provider: str, reported: float, tmp_path: Any
) -> None:
    # A server reporting prompt_tokens=-1000 (or 12.5) put that into TurnStats and the
    # cumulative stats; save() then wrote a checkpoint that load() refused as damaged.
    with FakeProvider(api_key=KEY, prompt_count=lambda msgs: reported) as server:  # type: ignore[arg-type,return-value]
        b = make(provider, server)
        llm = FiniteMemoryLLM(b, policy="sliding", max_tokens=2000, max_new_tokens=100)
        r = llm.chat("hello there")
        for _ in llm.stream("and again"):
            pass
        for stats in (r.stats, llm.last_stats):
            assert stats is not None
            assert isinstance(stats.prompt_tokens, int) and stats.prompt_tokens > 0
            assert "prompt_tokens" in stats.estimated
        assert llm.stats.prompt_tokens > 0
        path = tmp_path / "chat.json"
        llm.save(path)
        again = FiniteMemoryLLM.load(path, b)
        assert again.stats == llm.stats
        b.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_budget_error_caused_by_reported_usage_says_so(provider: str) -> None:
    # A first report of 5000 prompt tokens for a prompt of a few words makes the counter's
    # template cost ~5000: every later message is refused, and the error blamed the message
    # ("needs 10 tokens but at most 0 fit ... shorten the message").
    calls = itertools.count()

    def count(msgs: list[dict[str, str]]) -> int:
        return 5000 if next(calls) == 0 else 20

    with FakeProvider(api_key=KEY, prompt_count=count) as server:
        b = make(provider, server)
        llm = FiniteMemoryLLM(b, policy="sliding", max_tokens=2000, max_new_tokens=100)
        llm.chat("hello")
        before = llm.state
        with pytest.raises(MessageTooLongError, match="usage the provider reports") as info:
            llm.chat("again")
        assert f"counts {llm.counter.base} tokens in every prompt" in str(info.value)
        assert llm.state is before
        b.close()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("reported", [0, 1, 5])
def test_usage_reported_as_zeros_does_not_shrink_the_count(provider: str, reported: int) -> None:
    # Servers that send usage as zeros (prompt_tokens=0 for a whole prompt), or as a small
    # constant, were fitted as reports: the correction shrank every count, and prompts 4x
    # over max_tokens were sent (1,331 tokens by the server's own tokenizer under 300).
    with FakeProvider(api_key=KEY, prompt_count=lambda msgs: reported) as server:
        b = make(provider, server)
        llm = FiniteMemoryLLM(b, policy="sliding", max_tokens=300, max_new_tokens=50)
        for i in range(30):
            r = llm.chat(f"message number {i} with a few more words to fill the prompt " * 2)
            assert "prompt_tokens" in r.stats.estimated or reported
        for body in server.requests:
            system = _text_of(body.get("system", ""))
            msgs = [
                {"role": m["role"], "content": _text_of(m["content"])} for m in body["messages"]
            ]
            assert len(server.serialize(system, msgs)) + 50 <= 300
        b.close()
