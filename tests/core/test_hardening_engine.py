"""Engine hardening (issue 11): bad text at the door, configuration, concurrency, streams."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backend import Generation, StreamChunk, Usage
from fmai_core.errors import (
    BackendError,
    ConfigurationError,
    FMAIError,
    InvalidMessageError,
    MessageTooLongError,
)
from fmai_core.policies.base import Policy, PolicyRequest, Selection
from fmai_core.testing import EchoBackend

SURROGATE = b"caf\xe9".decode("utf-8", "surrogateescape")  # 'caf\udce9'


def make(policy: str = "sliding", **kw: Any) -> FiniteMemoryLLM:
    kw.setdefault("max_tokens", 200)
    kw.setdefault("max_new_tokens", 20)
    kw.setdefault("max_policy_ms", None)
    return FiniteMemoryLLM(kw.pop("backend", EchoBackend()), policy, **kw)


# -- defect 1: text that cannot be encoded as UTF-8 ----------------------------------------
def test_message_with_a_lone_surrogate_is_refused() -> None:
    for kwargs in ({"content": SURROGATE}, {"content": "ok", "name": SURROGATE}):
        with pytest.raises(InvalidMessageError, match="errors='replace'"):
            Message("user", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match="errors='replace'"):
        make(system_prompt=SURROGATE)


async def test_lone_surrogate_refused_at_every_door() -> None:
    llm = make()
    llm.chat("hello")
    before = llm.state
    with pytest.raises(InvalidMessageError, match="surrogate"):
        llm.chat(SURROGATE)
    with pytest.raises(InvalidMessageError, match="surrogate"):
        list(llm.stream(SURROGATE))
    with pytest.raises(InvalidMessageError, match="surrogate"):
        await llm.achat(SURROGATE)
    with pytest.raises(InvalidMessageError, match="surrogate"):
        [c async for c in llm.astream(SURROGATE)]
    with pytest.raises(InvalidMessageError, match="surrogate"):
        llm.context(SURROGATE)
    with pytest.raises(InvalidMessageError, match="surrogate"):
        llm.pin(SURROGATE)
    with pytest.raises(InvalidMessageError, match="surrogate"):
        llm.extend([Message("user", SURROGATE)])
    assert llm.state is before


def test_save_works_after_a_refused_surrogate_message(tmp_path: Path) -> None:
    llm = make()
    llm.chat("hello")
    before = llm.state.to_dict()
    with pytest.raises(InvalidMessageError):
        llm.chat(SURROGATE)
    assert llm.state.to_dict() == before
    llm.save(tmp_path / "c.json")
    again = FiniteMemoryLLM.load(tmp_path / "c.json", EchoBackend())
    assert again.state.to_dict() == before
    fixed = SURROGATE.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    assert llm.chat(fixed).response == "echo: caf\ufffd"
    llm.save(tmp_path / "c.json")


class SurrogateReply(EchoBackend):
    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        return Generation(text="bad \ud800 reply")

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        yield StreamChunk("bad \ud800 reply", generation=Generation(text="bad \ud800 reply"))


def test_a_reply_with_a_lone_surrogate_is_stored_replaced(tmp_path: Path) -> None:
    llm = make(backend=SurrogateReply())
    assert llm.chat("hi").response == "bad \ufffd reply"
    list(llm.stream("again"))
    assert all("\ud800" not in s.text for s in llm.state.history)
    llm.save(tmp_path / "c.json")  # never accepted what cannot be saved
    assert asyncio.run(llm.achat("third")).response == "bad \ufffd reply"


class SurrogatePieces(EchoBackend):
    """Streams a reply whose pieces hold lone surrogates (half an emoji in each of two)."""

    pieces = ("bad \ud83d", "\ude00 reply")

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        for piece in self.pieces:
            yield StreamChunk(piece)
        yield StreamChunk("", generation=Generation(text=""))

    async def astream(
        self, messages: Sequence[Message], **params: Any
    ) -> AsyncIterator[StreamChunk]:
        for chunk in self.stream(messages, **params):
            yield chunk


def test_a_streamed_reply_with_lone_surrogates_streams_what_is_stored() -> None:
    """Defect: stream() and astream() yielded the reply's pieces with their lone surrogates
    while the reply was stored with U+FFFD in their place: what a caller showed or sent on
    was not what the conversation holds (and `fmai serve`'s event stream, which cannot
    encode them, broke off with no error event)."""
    llm = make(backend=SurrogatePieces())
    pieces = list(llm.stream("hi"))
    assert "".join(pieces) == "bad \ufffd\ufffd reply" == llm.messages()[-1].content
    for piece in pieces:
        piece.encode("utf-8")

    async def collect() -> list[str]:
        return [p async for p in llm.astream("again")]

    pieces = asyncio.run(collect())
    assert "".join(pieces) == "bad \ufffd\ufffd reply" == llm.messages()[-1].content


# -- defect 6: settings must be finite numbers of the right type ---------------------------
@pytest.mark.parametrize(
    ("setting", "value", "accepted"),
    [
        ("max_policy_ms", float("nan"), "finite number"),
        ("max_policy_ms", float("inf"), "finite number"),
        ("max_policy_ms", "50", "finite number"),
        ("max_policy_ms", True, "finite number"),
        ("max_tokens", True, "int of at least 1"),
        ("max_tokens", 200.0, "int of at least 1"),
        ("max_new_tokens", True, "int of at least 1"),
        ("archive_limit", -1, "int of at least 0"),
        ("archive_limit", 1.5, "int of at least 0"),
        ("segment_tokens", "64", "int of at least 8"),
        ("segment_tokens", True, "int of at least 8"),
        ("low_water", float("nan"), "low_water must be"),
        ("low_water", "0.5", "low_water must be"),
        ("recall_fraction", "0.2", "recall_fraction must be"),
        ("recall_fraction", float("nan"), "recall_fraction must be"),
    ],
)
def test_bad_settings_raise_configuration_error(setting: str, value: Any, accepted: str) -> None:
    with pytest.raises(ConfigurationError, match=accepted):
        make(**{setting: value})


@pytest.mark.parametrize("value", [-5, 0, True, 3.5, "5"])
async def test_bad_max_new_tokens_per_turn_raise_configuration_error(value: Any) -> None:
    llm = make()
    with pytest.raises(ConfigurationError, match="max_new_tokens must be an int of at least 1"):
        llm.chat("hi", max_new_tokens=value)
    with pytest.raises(ConfigurationError, match="max_new_tokens"):
        list(llm.stream("hi", max_new_tokens=value))
    with pytest.raises(ConfigurationError, match="max_new_tokens"):
        await llm.achat("hi", max_new_tokens=value)
    with pytest.raises(ConfigurationError, match="max_new_tokens"):
        [c async for c in llm.astream("hi", max_new_tokens=value)]
    assert llm.state.history == ()
    assert llm.chat("hi", max_new_tokens=3).stats.completion_tokens <= 3
    assert llm.chat("hi", max_new_tokens=None).response == "echo: hi"  # None: the default


def test_evicting_turns_work_at_the_largest_finite_deadline() -> None:
    llm = make("hybrid", max_tokens=80, max_new_tokens=10, max_policy_ms=1e9)
    stats = [llm.chat(f"message {i} with some words").stats for i in range(12)]
    assert any(s.evicted for s in stats) and not any(s.fallback for s in stats)


# -- defects 4 and 5: one turn at a time, from any thread and any event loop ---------------
def _assert_serial(llm: FiniteMemoryLLM, n: int) -> None:
    record = llm.segments()
    users = [s.text for s in record if s.role == "user"]
    assert len(users) == n and len(set(users)) == n
    assert len([s for s in record if s.role == "assistant"]) == n
    for u, a in zip(record[::2], record[1::2]):
        assert (u.role, a.role) == ("user", "assistant")
        assert a.text == "echo: " + u.text  # each reply follows its own message
    assert llm.stats.turns == n


class GatedEcho(EchoBackend):
    """An EchoBackend whose replies wait until every caller has started: they contend.

    In place of a sleep that makes turns last: the first turn holds the conversation until
    all the other callers are on their way into it, so each of them really waits its turn.
    """

    def __init__(self, callers: int) -> None:
        super().__init__()
        self.callers = callers
        self._arrived = 0
        self._all_in = threading.Condition()

    def arrive(self) -> None:
        """Count one more caller as started."""
        with self._all_in:
            self._arrived += 1
            self._all_in.notify_all()

    def _gate(self) -> None:
        with self._all_in:
            assert self._all_in.wait_for(lambda: self._arrived >= self.callers, 30)

    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        self._gate()
        return super().generate(messages, **params)

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        self._gate()
        yield from super().stream(messages, **params)


def _run_threads(
    targets: list[Any], timeout: float = 30.0, gate: GatedEcho | None = None
) -> list[BaseException]:
    errors: list[BaseException] = []
    if gate is not None:
        assert gate.callers == len(targets)

    def wrap(fn: Any) -> Any:
        def run() -> None:
            try:
                if gate is not None:
                    gate.arrive()
                fn()
            except BaseException as exc:  # collected and asserted on below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    return errors


def test_fifty_threads_calling_chat_all_succeed_in_some_serial_order() -> None:
    backend = GatedEcho(50)  # the first turn waits until all 50 callers are in
    llm = make(max_tokens=100_000, archive_limit=None, backend=backend)

    def one(i: int) -> Any:
        def run() -> None:
            r = llm.chat(f"message number {i}")
            assert r.response == f"echo: message number {i}"

        return run

    assert _run_threads([one(i) for i in range(50)], gate=backend) == []
    _assert_serial(llm, 50)


def test_threads_mixing_chat_stream_pin_and_extend_take_turns() -> None:
    backend = GatedEcho(22)
    llm = make(max_tokens=100_000, archive_limit=None, backend=backend)

    def chat(i: int) -> Any:
        return lambda: llm.chat(f"chat {i}")

    def stream(i: int) -> Any:
        return lambda: "".join(llm.stream(f"stream {i}"))

    jobs = [chat(i) if i % 2 else stream(i) for i in range(20)]
    jobs += [lambda: llm.pin("A fact."), lambda: llm.extend([Message("user", "ext")])]
    assert _run_threads(jobs, gate=backend) == []
    segs = [s for s in llm.segments() if s.text != "ext"]
    for u, a in zip(segs[::2], segs[1::2]):
        assert a.text == "echo: " + u.text


def test_sync_threads_and_async_tasks_exclude_each_other() -> None:
    backend = GatedEcho(12)  # two event loops and ten threads
    llm = make(max_tokens=100_000, archive_limit=None, backend=backend)

    async def many(tag: str) -> None:
        await asyncio.gather(*(llm.achat(f"{tag} {i}") for i in range(10)))
        async for _ in llm.astream(f"{tag} stream"):
            pass

    jobs = [lambda: asyncio.run(many("loop a")), lambda: asyncio.run(many("loop b"))]
    jobs += [(lambda i=i: llm.chat(f"thread {i}")) for i in range(10)]
    assert _run_threads(jobs, gate=backend) == []
    _assert_serial(llm, 32)


def test_a_second_asyncio_run_on_the_same_instance_works() -> None:
    # No delay needed: each turn plans in a worker thread, so the other tasks of the loop
    # always run meanwhile and queue for the conversation on this loop.
    llm = make(max_tokens=100_000)

    async def contended() -> None:
        await asyncio.gather(*(llm.achat(f"m{i}") for i in range(3)))

    asyncio.run(contended())  # the waiters of this loop used to bind the lock to it
    asyncio.run(contended())
    assert llm.stats.turns == 6


async def _queued(llm: FiniteMemoryLLM, waiters: int = 1) -> None:
    """Let the loop run until `waiters` callers wait for the conversation (no real sleep)."""
    for _ in range(10_000):
        if len(llm._turn._waiters) >= waiters:
            return
        await asyncio.sleep(0)  # a yield to the event loop, not a wait
    raise AssertionError("no caller queued for the conversation")


class Blocking(EchoBackend):
    """An async backend whose reply to a message with "block" in it never comes."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def agenerate(self, messages: Sequence[Message], **params: Any) -> Generation:
        if "block" in messages[-1].content:
            self.entered.set()
            await asyncio.Event().wait()
        return self.generate(messages, **params)


def test_cancelled_waiters_and_turns_release_the_conversation() -> None:
    backend = Blocking()
    llm = make(max_tokens=100_000, backend=backend)

    async def scenario() -> None:
        running = asyncio.create_task(llm.achat("block here"))
        await asyncio.wait_for(backend.entered.wait(), 10)
        waiting = asyncio.create_task(llm.achat("waits"))
        await _queued(llm)
        assert not waiting.done()
        for task in (waiting, running):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert (await asyncio.wait_for(llm.achat("after"), 10)).response == "echo: after"

    asyncio.run(scenario())
    assert llm.chat("sync after").response == "echo: sync after"
    assert [s.text for s in llm.state.history][::2] == ["after", "sync after"]


def test_a_waiter_cancelled_just_as_it_is_granted_hands_the_turn_on() -> None:
    llm = make()

    async def scenario() -> None:
        llm._turn.acquire()  # a sync turn in progress
        waiting = asyncio.create_task(llm.achat("waits"))
        await _queued(llm)
        llm._turn.release()  # grants it: its wake-up is scheduled on this loop
        waiting.cancel()  # ... and it is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (await asyncio.wait_for(llm.achat("after"), 10)).response == "echo: after"

    asyncio.run(scenario())
    assert llm.state.history[0].text == "after"


def test_a_stream_dropped_early_releases_the_conversation() -> None:
    llm = make()
    it = llm.stream("one two three")
    next(it)
    del it  # closed by the garbage collector: the turn is released, nothing stored
    assert _run_threads([lambda: llm.chat("next")], timeout=10) == []
    assert [s.text for s in llm.state.history] == ["next", "echo: next"]


def test_a_turn_started_inside_a_running_stream_is_refused_not_deadlocked() -> None:
    llm = make()
    errors: list[BaseException] = []

    def nested() -> None:
        for _ in llm.stream("one two"):
            try:
                llm.chat("inside")
            except FMAIError as exc:
                errors.append(exc)
                break

    assert _run_threads([nested], timeout=10) == []
    assert errors and "already running" in str(errors[0])
    assert llm.chat("later").response == "echo: later"


# -- defect 10: planning has no side effect; the switch-off of model signals commits -------
class SlowScorer(EchoBackend):
    """A backend whose importance scores come only when released: past any latency budget."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def score_importance(self, texts: Sequence[str], query: str) -> list[float]:
        self.release.wait(30)  # the abandoned worker ends when the test releases it
        return [1.0] * len(texts)


def test_context_never_switches_model_signals_off_a_committed_turn_does() -> None:
    backend = SlowScorer()
    llm = make("importance", backend=backend, max_tokens=90, max_new_tokens=10, max_policy_ms=50)
    try:
        llm.extend(
            Message("user" if i % 2 == 0 else "assistant", f"message {i} with a few more words")
            for i in range(12)
        )
        before = llm.state
        ctx = llm.context("what did I say?")  # evicts: the slow scorer misses the deadline
        assert ctx and llm.state is before
        assert llm.model_signals, "context() must have no side effect"
        r = llm.chat("what did I say?")
    finally:
        backend.release.set()
    assert r.stats.fallback and "model_signals" in r.stats.policy_stats
    assert not llm.model_signals  # switched off when the turn committed
    llm.reset()
    assert llm.model_signals


# -- defect 11: smaller defects ------------------------------------------------------------
def test_a_10_mb_message_is_refused_before_segmentation() -> None:
    llm = make(max_tokens=2048, max_new_tokens=256)
    llm.chat("hello")
    before = llm.state
    huge = "word " * 2_000_000  # 10 MB
    for call in (llm.chat, llm.context, lambda t: list(llm.stream(t))):
        start = time.perf_counter()
        with pytest.raises(MessageTooLongError, match="characters") as info:
            call(huge)
        assert time.perf_counter() - start < 0.5  # before: seconds, with the lock held
        assert info.value.available == 2048 - 256
    assert llm.state is before
    limit = FiniteMemoryLLM.MAX_CHARS_PER_TOKEN * (2048 - 256)
    with pytest.raises(MessageTooLongError, match="tokens but at most"):
        llm.chat("w " * (limit // 2))  # under the size bound: the exact token check decides
    assert llm.chat("still fine").response == "echo: still fine"


class Leaky(Policy):
    """A policy whose exception message carries the user's text."""

    name = "leaky"

    def select(self, request: PolicyRequest) -> Selection:
        raise ValueError(f"could not score {request.query!r}")


def test_fallback_reason_never_carries_user_text_into_the_jsonl_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fmai_core import planner
    from fmai_core.telemetry import JSONLTurnLog

    def old_style(fn: Any, deadline_ms: float | None) -> tuple[Any, str | None]:
        try:
            return fn(), None
        except Exception as exc:  # the reason format of the report
            return None, f"{type(exc).__name__}: {exc}"

    log = tmp_path / "turns.jsonl"
    for patched in (False, True):
        if patched:
            monkeypatch.setattr(planner, "_run_with_deadline", old_style)
        llm = make(Leaky(), max_tokens=60, max_new_tokens=8, hooks=[JSONLTurnLog(log)])
        for i in range(8):
            llm.chat(f"my PIN is QXZW-{i} and my name is Zedediah")
    text = log.read_text()
    assert "QXZW" not in text and "Zedediah" not in text
    reasons = {
        v
        for line in text.splitlines()
        for k, v in json.loads(line)["policy_stats"].items()
        if k.endswith("fallback_reason")
    }
    assert reasons and all(r.startswith(("policy raised", "ValueError")) for r in reasons), reasons


def test_unknown_keyword_arguments_name_the_close_match() -> None:
    with pytest.raises(ConfigurationError, match=r"'low_watter'.*did you mean 'low_water'"):
        make(low_watter=0.1)
    with pytest.raises(ConfigurationError, match="did you mean 'temperature'"):
        make(temperatur=0.2)
    with pytest.raises(ConfigurationError, match=r"generation=\{"):
        make(frobnicate=1)
    llm = make(temperature=0.3, top_p=0.9, seed=1, stop=["\n"], top_k=5)
    assert llm.generation["top_p"] == 0.9 and llm.generation["top_k"] == 5
    llm = make(generation={"custom_flag": True, "temperature": 0.1}, temperature=0.5)
    assert llm.generation == {"custom_flag": True, "temperature": 0.5}
    with pytest.raises(ConfigurationError, match="generation must be a mapping"):
        make(generation=[("temperature", 0.1)])


class Recorder(EchoBackend):
    def __init__(self) -> None:
        super().__init__()
        self.params: list[dict[str, Any]] = []

    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        self.params.append(params)
        return super().generate(messages, **params)


def test_generation_mapping_reaches_the_backend() -> None:
    backend = Recorder()
    llm = make(backend=backend, generation={"custom_flag": True})
    llm.chat("hi")
    assert backend.params[-1]["custom_flag"] is True


class NoFinalChunk(EchoBackend):
    """A custom backend whose stream ends without its final chunk (no `.generation`)."""

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        yield StreamChunk("half a")
        yield StreamChunk(" reply")

    async def astream(self, messages: Sequence[Message], **params: Any) -> AsyncIterator[Any]:
        for chunk in self.stream(messages, **params):
            yield chunk


async def test_a_stream_without_its_final_chunk_is_not_stored_as_complete() -> None:
    llm = make(backend=NoFinalChunk())
    llm.chat("first")
    before = llm.state
    seen: list[str] = []
    it = llm.stream("hi")
    seen += [next(it), next(it)]  # the caller sees what arrived ...
    assert "".join(seen) == "half a reply"
    with pytest.raises(BackendError, match="final chunk"):
        next(it)  # ... and then the truth: it was not complete
    with pytest.raises(BackendError, match="final chunk"):
        [c async for c in llm.astream("hi")]
    assert llm.state is before and llm.stats.turns == 1
    assert llm.chat("after").response == "echo: after"


class LoopSpy:
    """An embedder that notes, at each call, whether it runs on an event loop's thread."""

    identity = "loop-spy"

    def __init__(self) -> None:
        self.on_loop: list[bool] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return [[float(len(t)), 1.0 + t.count(" ")] for t in texts]


def test_achat_and_astream_never_embed_on_the_event_loop() -> None:
    """Defect: achat and astream committed the turn on the event loop, and the commit embeds
    the turn's new segments for recall: with a model embedder (HFBackend's own, under
    `fmai serve`; a SentenceEmbedder) a forward pass blocked every other task of the loop
    each turn. Planning already ran in a worker thread; the commit now does too."""
    spy = LoopSpy()
    llm = make("hybrid", embedder=spy, max_tokens=400, max_new_tokens=20)

    async def turns() -> None:
        await llm.achat("My sister is called Ada and lives in Paris.")
        async for _ in llm.astream("What is my sister called?"):
            pass

    asyncio.run(turns())
    assert spy.on_loop and not any(spy.on_loop), spy.on_loop
    assert [m.content for m in llm.messages()][::2] == [
        "My sister is called Ada and lives in Paris.", "What is my sister called?"
    ]  # fmt: skip


def test_a_hook_of_an_async_turn_starting_a_turn_is_refused_not_deadlocked() -> None:
    """The commit of achat/astream (and so its hooks) runs in a worker thread: a hook that
    starts another turn of the same conversation there, sync or async, must get the
    re-entry error, as on the turn's own thread, not wait for the turn that waits for it."""
    errors: list[BaseException] = []
    llm: FiniteMemoryLLM

    class Reentrant:
        def on_turn(self, stats: Any) -> None:
            for start in (lambda: llm.chat("inside"), lambda: asyncio.run(llm.achat("inside"))):
                try:
                    start()
                except FMAIError as exc:
                    errors.append(exc)

    llm = make(hooks=[Reentrant()])

    async def turns() -> None:
        await llm.achat("outside")
        async for _ in llm.astream("outside again"):
            pass

    runner = threading.Thread(target=lambda: asyncio.run(turns()), daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "deadlocked"
    assert len(errors) == 4 and all("already running" in str(e) for e in errors), errors
    assert [m.content for m in llm.messages() if m.role == "user"] == ["outside", "outside again"]


class SurrogateSummaries(EchoBackend):
    """Writes faithful summaries that end in a lone surrogate (as a model's reply can)."""

    def summarize(self, text: str, max_tokens: int) -> str:
        return " ".join(text.split()[:12]) + " \ud800"


@pytest.mark.parametrize("policy", ["rolling_summary", "hybrid"])
def test_a_summary_with_a_lone_surrogate_is_kept_replaced_not_blamed_on_the_user(
    tmp_path: Path, policy: str
) -> None:
    """Defect: a summary holding a lone surrogate (a summarizer's reply can) made every
    turn from the one that wrote it fail with "Message content holds a lone surrogate ...
    decode them with errors='replace'" (the user's text was fine; a serve client got a
    400 it could not fix, turn after turn). The summary is now kept with U+FFFD in its
    place, as a reply is, and the conversation saves and loads."""
    llm = make(policy, backend=SurrogateSummaries(), max_tokens=200, max_new_tokens=16)
    for i in range(40):
        llm.chat(f"My sister Ada lives in Paris, message {i} number {i * 7}.")
    summary = llm.state.summary
    if summary is not None:  # hybrid folds only when its knapsack picks the summary
        assert "\ud800" not in summary.text and summary.text.endswith("\ufffd")
    llm.save(tmp_path / "c.json")
    again = FiniteMemoryLLM.load(tmp_path / "c.json", SurrogateSummaries())
    assert again.state.to_dict() == llm.state.to_dict()


class OddEmbedder:
    """An embedder that returns NaN for some texts, or vectors of varying length."""

    identity = "odd"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.kind == "nan":  # as a model's pooling of an empty or overflowing text can
            return [[float("nan"), 1.0] if "3" in t else [1.0, float(len(t))] for t in texts]
        return [[1.0] * (1 + len(t) % 3) for t in texts]


@pytest.mark.parametrize("kind", ["nan", "ragged"])
def test_an_embedder_s_unusable_vectors_are_skipped_so_saves_load(
    tmp_path: Path, kind: str
) -> None:
    """Defect: an embedding holding NaN was kept, and `save` wrote a checkpoint that `load`
    then refused as "damaged: its embeddings ... Restore a backup" (the conversation could
    not be reloaded, ever); vectors of varying length crashed the turn's recall with a
    numpy broadcast error. Such vectors are now not kept (those messages are found by
    their words), and what is saved loads."""
    for policy in ("semantic", "hybrid"):
        llm = make(policy, embedder=OddEmbedder(kind), max_tokens=200, max_new_tokens=16)
        for i in range(30):
            llm.chat(f"message {i} about Ada in Paris number {i}")
        llm.save(tmp_path / "c.json")
        again = FiniteMemoryLLM.load(tmp_path / "c.json", EchoBackend(), embedder=OddEmbedder(kind))
        assert again.state.to_dict() == llm.state.to_dict()
        assert again.chat("what about Ada?").response


def test_a_turn_cancelled_while_it_plans_holds_the_conversation_until_the_plan_ends() -> None:
    """Planning runs in a worker thread under the conversation's lock (and may run model
    signals): a turn cancelled meanwhile hands the conversation on only once it has ended,
    however many times it is cancelled, and stores nothing (before, the cancellation went
    on at once, the planning still running)."""
    llm = make()
    planning, release = threading.Event(), threading.Event()
    plan = llm._planner.plan

    def gated(*args: Any, **kwargs: Any) -> Any:
        if not planning.is_set():
            planning.set()
            assert release.wait(30)
        return plan(*args, **kwargs)

    llm._planner.plan = gated  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.create_task(llm.achat("first"))
        assert await asyncio.to_thread(planning.wait, 30)
        for _ in range(2):
            task.cancel()
            for _ in range(10):
                await asyncio.sleep(0)
        assert not task.done() and llm._turn._held
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not llm._turn._held and llm.stats.turns == 0
        assert (await asyncio.wait_for(llm.achat("after"), 10)).response == "echo: after"

    asyncio.run(scenario())


def test_closing_an_async_stream_closes_the_backends_stream_before_it_returns() -> None:
    """`aclose()` of `FiniteMemoryLLM.astream` closes the backend's stream itself before it
    hands the conversation on (before, the backend's stream was left to the garbage
    collector, closed later: a local model went on generating meanwhile)."""
    closed: list[bool] = []

    class Tracked(EchoBackend):
        async def astream(
            self, messages: Sequence[Message], **params: Any
        ) -> AsyncIterator[StreamChunk]:
            try:
                for word in ("one ", "two ", "three "):
                    yield StreamChunk(word)
                    await asyncio.sleep(0)
            finally:
                closed.append(True)

    llm = make(backend=Tracked())

    async def scenario() -> None:
        stream = llm.astream("hello")
        assert await anext(stream) == "one "
        await stream.aclose()  # type: ignore[attr-defined]
        assert closed == [True]
        assert not llm._turn._held and llm.stats.turns == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "usage",
    [
        Usage(prompt_tokens=-7, reused_tokens=-3, prefill_tokens=-4, completion_tokens=-2),
        Usage(prompt_tokens=12.5, reused_tokens=None, prefill_tokens=3.5, completion_tokens=1.5),  # type: ignore[arg-type]
        Usage(prompt_tokens=10, reused_tokens=40, prefill_tokens=99, completion_tokens=2),
    ],
)
def test_usage_of_a_backend_that_is_not_a_count_never_reaches_the_stats(
    usage: Usage, tmp_path: Path
) -> None:
    # A custom backend's usage went into the stats as it was: negative or fractional
    # figures made a checkpoint that load() refused, and reuse could exceed the prompt.
    class Odd(EchoBackend):
        def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
            gen = super().generate(messages, **params)
            return Generation(gen.text, usage, gen.latency_ms, gen.ttft_ms)

    llm = FiniteMemoryLLM(Odd(), policy="sliding", max_tokens=200, max_new_tokens=20)
    s = llm.chat("hello there").stats
    figures = (s.prompt_tokens, s.prefill_tokens, s.completion_tokens, s.context_tokens)
    assert all(isinstance(x, int) and x >= 0 for x in figures)
    assert s.reused_tokens is None or 0 <= s.reused_tokens <= s.prompt_tokens
    assert s.prefill_tokens <= s.prompt_tokens
    path = tmp_path / "chat.json"
    llm.save(path)
    assert FiniteMemoryLLM.load(path, Odd()).stats == llm.stats


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"temperature": "hot"}, "temperature must be a finite number"),
        ({"top_p": float("nan")}, "top_p must be a finite number"),
        ({"top_k": 2.5}, "top_k must be an int"),
        ({"seed": True}, "seed must be an int"),
        ({"stop": 5}, "stop must be a string or a list of strings"),
        ({"messages": []}, "'messages' cannot be a generation parameter"),
        ({"max_new_tokens": "5"}, "max_new_tokens must be an int"),
    ],
)
def test_generation_parameters_no_turn_could_use_are_refused_up_front(
    params: dict[str, Any], match: str
) -> None:
    # They were taken, and then every turn failed: temperature="hot" reached the backend
    # (a hosted one blamed the server's response), messages=[...] clashed with the prompt,
    # max_new_tokens="5" failed each turn's check.
    with pytest.raises(ConfigurationError, match=match):
        make(generation=params)
    llm = make()
    before = llm.state
    with pytest.raises(ConfigurationError, match=match):
        llm.chat("hello", **params)
    assert llm.state is before
    llm = make(generation={"temperature": None, "stop": "END", "top_k": 0, "custom": "x"})
    assert llm.chat("hello").response


def test_an_astream_cancelled_during_its_commit_leaves_its_stats_with_its_trace() -> None:
    # The commit runs to its end (the turn is stored), but last_stats was set after it, so
    # it kept the previous turn's figures while last_trace had this one's.
    entered, go = threading.Event(), threading.Event()

    class Slow:
        def on_turn(self, stats: Any) -> None:
            if stats.turn == 1:
                entered.set()
                go.wait(10)

    llm = make(hooks=[Slow()])

    async def main() -> None:
        async for _ in llm.astream("first"):
            pass

        async def second() -> None:
            async for _ in llm.astream("second one"):
                pass

        task = asyncio.ensure_future(second())
        assert await asyncio.to_thread(entered.wait, 10)  # the commit is running its hook
        task.cancel()
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert llm.stats.turns == 2
    assert llm.last_trace is not None and llm.last_stats is not None
    assert llm.last_stats.turn == 1 and llm.last_trace.stats == llm.last_stats
    r = llm.chat("third")
    assert llm.last_stats == r.stats  # every kind of turn leaves its figures


def test_reset_forgets_the_last_turn_too() -> None:
    # last_trace kept the old conversation's prompt, quoted part by part, after reset().
    llm = make()
    llm.chat("my secret is 1234")
    assert llm.last_trace is not None
    llm.reset()
    assert llm.last_trace is None and llm.last_stats is None
    assert "1234" not in repr(vars(llm).get("last_trace"))


def test_stats_read_during_a_commit_are_never_half_applied() -> None:
    # A turn's commit stores the state, then its figures; llm.stats from another thread in
    # between saw the new messages with the old turn count (messages 22, turns 10).
    from fmai_core.policies.sliding import SlidingWindowPolicy

    reads: list[Any] = []
    readers: list[threading.Thread] = []

    class Pausing(SlidingWindowPolicy):
        def prepare(self, segments: Sequence[Any]) -> None:  # runs inside the commit
            if any(s.role == "assistant" for s in segments):
                reader = threading.Thread(target=lambda: reads.append(llm.stats))
                reader.start()
                readers.append(reader)
                reader.join(0.2)  # a read that does not wait for the commit is done by now

    llm = make(Pausing())
    for i in range(3):
        llm.chat(f"message {i}")
    for reader in readers:
        reader.join(10)
    assert len(reads) == 3
    assert all(s.messages == 2 * s.turns for s in reads), [(s.turns, s.messages) for s in reads]
