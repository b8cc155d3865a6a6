"""`FiniteMemoryLLM`: a chat with a bounded prompt and an unbounded record."""

from __future__ import annotations

import re
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import (
    AsyncGenerator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import TYPE_CHECKING, Any, cast

from fmai_core.backend import (
    AsyncBackend,
    Backend,
    Embedder,
    Generation,
    ImportanceScorer,
    SentenceSplitter,
    Summarizer,
    Usage,
    to_thread_to_its_end,
    token_count,
)
from fmai_core.config import MemoryConfig, _check_int
from fmai_core.context import ContextBuilder
from fmai_core.errors import (
    BackendError,
    BudgetError,
    CheckpointError,
    ConfigurationError,
    EmptyMessageError,
    FMAIError,
    InvalidMessageError,
    MessageTooLongError,
)
from fmai_core.memory import MemoryState, recount, segment_message
from fmai_core.messages import Message, Role, check_encodable
from fmai_core.messages import encodable as _encodable
from fmai_core.segments import Segment
from fmai_core.stats import MemoryStats, TurnStats
from fmai_core.text import split_sentences
from fmai_core.tokens import TokenCounter

# The planner, the policies and the recall index (with the relevance scorers under them) are
# imported when the first conversation is built, not with this module: that keeps
# `from fmai_core import FiniteMemoryLLM` light (see docs/benchmarks.md, "Import time").
if TYPE_CHECKING:
    import asyncio
    from types import TracebackType

    from fmai_core.checkpoint import Snapshot
    from fmai_core.planner import Plan
    from fmai_core.policies import Policy
    from fmai_core.retrieval import RecallIndex
    from fmai_core.trace import TurnTrace

__all__ = ["GENERATION_PARAMS", "ChatResult", "FiniteMemoryLLM"]

#: Generation parameters `FiniteMemoryLLM` takes as keyword arguments (what the backends
#: document); any other backend parameter goes in its `generation=` mapping.
GENERATION_PARAMS = frozenset(
    {"temperature", "top_p", "top_k", "seed", "stop", "repetition_penalty", "min_new_tokens"}
)

_REENTRY = (
    "A turn of this conversation is already running here (a stream not yet exhausted, or a "
    "hook of the turn): finish or close it before starting another turn, pin or extend."
)


@dataclass(eq=False)
class _Waiter:
    owner: object  # a thread id, or an asyncio task
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[None] | None = None
    event: threading.Event = field(default_factory=threading.Event)
    granted: bool = False
    abandoned: bool = False


def _running_loop() -> object:
    aio = sys.modules.get("asyncio")
    if aio is None:
        return None
    try:
        return aio.get_running_loop()
    except RuntimeError:
        return None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _TurnLock:
    """One turn at a time per conversation, for threads and event loops alike.

    A first-come, first-served lock that is not bound to a thread or an event loop: a
    thread waits on an event, a task on a future of its own loop, woken thread-safely at
    its turn. So sync callers on any thread and async callers on any loop exclude each
    other, a second `asyncio.run()` works, and an async turn may plan in a worker thread
    and commit on its loop. A waiter that is cancelled (or interrupted) gives up its place,
    or hands the turn on if it was granted meanwhile: the lock is never leaked.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._owner: object = None
        self._owner_loop: object = None
        self._waiters: deque[_Waiter] = deque()
        #: Threads working for the current turn (an async turn's commit): a turn started
        #: from one of them is a re-entry, as from the owner's own thread.
        self._guests: set[int] = set()

    @contextmanager
    def guest(self) -> Iterator[None]:
        """Mark this thread as working for the current turn while the block runs."""
        me = threading.get_ident()
        with self._mutex:
            self._guests.add(me)
        try:
            yield
        finally:
            with self._mutex:
                self._guests.discard(me)

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Block this thread until it is this caller's turn."""
        me = threading.get_ident()
        with self._mutex:
            if not self._held:
                self._held, self._owner, self._owner_loop = True, me, None
                return
            if self._owner == me or me in self._guests:
                raise FMAIError(_REENTRY)
            if self._owner_loop is not None and self._owner_loop is _running_loop():
                raise FMAIError(
                    "An async turn of this conversation is running on this event loop, and a "
                    "sync call here would block the loop it waits for: use achat/astream, "
                    "or await the running turn first."
                )
            waiter = _Waiter(me)
            self._waiters.append(waiter)
        try:
            waiter.event.wait()
        except BaseException:
            self._give_up(waiter)
            raise

    async def acquire_async(self) -> None:
        """Wait, without blocking the event loop, until it is this task's turn."""
        import asyncio

        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        with self._mutex:
            if not self._held:
                self._held, self._owner, self._owner_loop = True, task, loop
                return
            if (task is not None and self._owner is task) or threading.get_ident() in self._guests:
                raise FMAIError(_REENTRY)
            future: asyncio.Future[None] = loop.create_future()
            waiter = _Waiter(task, loop, future)
            self._waiters.append(waiter)
        try:
            await future
        except BaseException:
            self._give_up(waiter)
            raise

    def _give_up(self, waiter: _Waiter) -> None:
        with self._mutex:
            granted = waiter.granted
            waiter.abandoned = not granted
        if granted:  # the turn was handed over while the waiter was being cancelled
            self.release()

    def release(self) -> None:
        """End the current turn and hand it to the next waiter, if any."""
        with self._mutex:
            while self._waiters:
                waiter = self._waiters.popleft()
                if waiter.abandoned:
                    continue
                if waiter.future is None:
                    waiter.event.set()
                elif waiter.loop is not None:
                    try:
                        waiter.loop.call_soon_threadsafe(_wake, waiter.future)
                    except RuntimeError:  # its loop is closed: nobody waits there any more
                        continue
                waiter.granted = True
                self._owner, self._owner_loop = waiter.owner, waiter.loop
                return
            self._held, self._owner, self._owner_loop = False, None, None


@dataclass(frozen=True)
class ChatResult:
    """The reply to one turn and its figures.

    `trace` is the turn's [`TurnTrace`][fmai_core.trace.TurnTrace]: its prompt part by
    part, what was evicted and recalled (with scores), and `stats`.
    """

    response: str
    stats: TurnStats
    trace: TurnTrace | None = None


class FiniteMemoryLLM:
    """A conversation with any backend whose prompt never outgrows `max_tokens`.

    Args:
        backend: Any [`Backend`][fmai_core.backend.Backend].
        policy: A policy name (`sliding`, `importance`, `semantic`, `rolling_summary`,
            `hybrid`) or a [`Policy`][fmai_core.policies.base.Policy] instance.
        max_tokens: Hard limit: prompt tokens + `max_new_tokens` never exceed it.
        max_new_tokens: Tokens reserved for (and the most generated in) each reply.
        system_prompt: Pinned at the top of every prompt; never dropped.
        max_policy_ms: Latency budget of the policy per call; past it the policy is
            abandoned and `sliding` used (`TurnStats.fallback`), and model signals are
            switched off for the rest of the conversation (see `model_signals`). `None`
            disables it.
        low_water: After an eviction, history fills at most this share of its budget, so
            many turns pass (and caches stay valid) before the next eviction.
        recall_fraction: Share of the free budget reserved for recalled segments
            (policies that recall). `None` (the default) splits it by the query: a
            follow-up gets 10%, a question about the distant past 80% or all that is free (see
            [`Planner.recall_share`][fmai_core.planner.Planner.recall_share]).
        segment_tokens: Messages longer than this are split into sentence-aligned parts.
        archive_limit: Most segments kept in the archive (`None`: unbounded); a full
            archive drops its lowest-value segment first.
        recall_layout: `"fresh"` (recalled segments appear in the new user message only)
            or `"stable"` (they stay with the message they were recalled for, so the
            prompt is append-only between evictions and a KV cache reuses it; see
            [`MemoryConfig`][fmai_core.config.MemoryConfig]).
        hooks: Objects with `on_turn(stats)`, called after every turn (see telemetry).
        embedder: Overrides the embeddings found on the backend.
        scorer: Overrides the importance scores found on the backend.
        summarizer: Overrides the summaries found on the backend.
        generation: Default generation parameters of every turn, any the backend takes
            (`{"temperature": 0.7, "presence_penalty": 0.5}`); checkpoints keep those JSON
            can hold.
        config: The memory settings as one [`MemoryConfig`][fmai_core.config.MemoryConfig],
            instead of the keywords `max_tokens` ... `recall_layout` (passing both raises
            `ConfigurationError`). The keywords build one; either way it is `llm.config`.
        **params: The documented generation parameters as keywords (`temperature`,
            `top_p`, `top_k`, `seed`, `stop`, `repetition_penalty`, `min_new_tokens`; see
            `GENERATION_PARAMS`), which override `generation`. Any other keyword raises
            `ConfigurationError` naming the closest setting (`low_watter` → `low_water`).

    Raises:
        ConfigurationError: a setting is invalid or unknown.
        BudgetError: the budget leaves no room for a message.

    Example:
        ```python
        from fmai_core import FiniteMemoryLLM
        from fmai_core.testing import EchoBackend

        llm = FiniteMemoryLLM(EchoBackend(), policy="sliding", max_tokens=256,
                              max_new_tokens=32, system_prompt="Be brief.")
        print(llm.chat("Hello!").response)
        ```
    """

    def __init__(
        self,
        backend: Backend,
        policy: str | Policy = "hybrid",
        max_tokens: int = 2048,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        max_policy_ms: float | None = 200.0,
        *,
        low_water: float = 0.6,
        recall_fraction: float | None = None,
        segment_tokens: int = 64,
        archive_limit: int | None = 10_000,
        recall_layout: str = "fresh",
        hooks: Iterable[Any] = (),
        embedder: Embedder | None = None,
        scorer: ImportanceScorer | None = None,
        summarizer: Summarizer | None = None,
        generation: Mapping[str, Any] | None = None,
        config: MemoryConfig | None = None,
        **params: Any,
    ) -> None:
        from fmai_core.memo import EmbeddingCache
        from fmai_core.planner import Planner
        from fmai_core.policies import get_policy
        from fmai_core.policies.base import Signals
        from fmai_core.summarizer import backend_summarizer

        _check_params(params)
        if generation is not None and not isinstance(generation, Mapping):
            raise ConfigurationError(
                f"generation must be a mapping of parameter names to values, or None; got "
                f"{type(generation).__name__}."
            )
        settings: dict[str, Any] = {
            "max_tokens": max_tokens,
            "max_new_tokens": max_new_tokens,
            "system_prompt": system_prompt,
            "max_policy_ms": max_policy_ms,
            "low_water": low_water,
            "recall_fraction": recall_fraction,
            "segment_tokens": segment_tokens,
            "archive_limit": archive_limit,
            "recall_layout": recall_layout,
        }
        if config is None:
            config = MemoryConfig(**settings)
        elif not isinstance(config, MemoryConfig):
            raise ConfigurationError(
                f"config must be a MemoryConfig or None, got {type(config).__name__}."
            )
        else:
            defaults = MemoryConfig()
            given = sorted(k for k, v in settings.items() if v != getattr(defaults, k))
            if given:
                raise ConfigurationError(
                    f"Pass the memory settings either in config= or as keywords, not both "
                    f"(got config= and {', '.join(given)}): use "
                    f"dataclasses.replace(config, {given[0]}=...)."
                )
        self.config = config
        self.backend = backend
        self.policy = get_policy(policy)
        self.generation = {**(generation or {}), **params}
        self.generation.setdefault("temperature", 0.0)
        _check_generation(self.generation)
        self._params({})  # max_new_tokens, checked as each turn checks it
        self.hooks = list(hooks)
        self.counter = TokenCounter(backend)
        self.builder = ContextBuilder()
        scorer = scorer or (backend if isinstance(backend, ImportanceScorer) else None)
        embedder = embedder or (backend if isinstance(backend, Embedder) else None)
        summarizer = summarizer or (backend if isinstance(backend, Summarizer) else None)
        signals = Signals(
            importance=scorer.score_importance if scorer else None,
            embed=EmbeddingCache(embedder.embed) if embedder else None,
            summarize=summarizer.summarize if summarizer else backend_summarizer(backend),
        )
        self._signals = signals
        self._planner = Planner(
            policy=self.policy,
            counter=self.counter,
            builder=self.builder,
            config=config,
            signals=signals,
        )
        self._embedder_id: str | None = None
        if embedder is not None:
            self._embedder_id = getattr(embedder, "identity", None) or None
        self._planner.index = self._new_index()
        if isinstance(self.policy, SentenceSplitter):
            self._split = self.policy.split_sentences
        elif isinstance(backend, SentenceSplitter):
            self._split = backend.split_sentences
        else:
            self._split = split_sentences
        self._lock = threading.RLock()  # guards the state for short reads and commits
        # the segments' JSON of the last save (a save encodes only what changed since)
        self._save_fragments: dict[int, Any] = {}
        self._save_lock = threading.Lock()
        self._turn = _TurnLock()  # held through a whole turn: plan, generate, commit
        self._state = MemoryState()
        self._version = 0
        self._stats = MemoryStats()
        self._check_fixed(self._state)

    def _new_index(self) -> RecallIndex:
        from fmai_core.retrieval import RecallIndex

        index = RecallIndex()
        index.embedder = self._embedder_id
        return index

    # -- configuration checks ---------------------------------------------------------------
    def _check_fixed(self, state: MemoryState) -> None:
        from fmai_core.planner import template_note

        # the rolling summary is not counted: a turn it leaves no room for drops it
        fixed = self.counter.base + self._planner.system_cost(state, None)
        smallest = self.counter.message_overhead + 1
        if fixed + smallest + self.max_new_tokens > self.max_tokens:
            raise BudgetError(
                f"The system prompt and pinned facts take {fixed} tokens; with max_new_tokens="
                f"{self.max_new_tokens} no room is left for a message under max_tokens="
                f"{self.max_tokens}. Raise max_tokens, lower max_new_tokens, or shorten them."
                f"{template_note(self.counter, self.config.room)}"
            )

    # -- settings -------------------------------------------------------------------------
    @property
    def max_tokens(self) -> int:
        """`config.max_tokens`: prompt tokens + `max_new_tokens` never exceed it."""
        return self.config.max_tokens

    @property
    def max_new_tokens(self) -> int:
        """`config.max_new_tokens`: the most tokens generated in a reply."""
        return self.config.max_new_tokens

    @property
    def system_prompt(self) -> str | None:
        """`config.system_prompt`."""
        return self.config.system_prompt

    @property
    def segment_tokens(self) -> int:
        """`config.segment_tokens`."""
        return self.config.segment_tokens

    # -- state ----------------------------------------------------------------------------
    @property
    def state(self) -> MemoryState:
        """The current (immutable) memory state."""
        return self._state

    @property
    def stats(self) -> MemoryStats:
        """Cumulative figures over the conversation.

        Read under the conversation's lock, as `save` reads it: a turn's commit stores its
        messages and its figures together, and a read from another thread meanwhile saw the
        new messages with the old figures (`messages` 22 with `turns` 10).
        """
        with self._lock:
            s, totals = self._state, replace(self._stats)
        return replace(
            totals,
            segments=len(s.history) + len(s.archive),
            prompt_segments=len(s.history),
            archived_segments=len(s.archive),
            messages=len({seg.message_id for seg in (*s.history, *s.archive)}),
        )

    def _segments(
        self,
        state: MemoryState,
        role: str,
        text: str,
        name: str | None = None,
        timestamp: str | None = None,
    ) -> list[Segment]:
        return segment_message(
            role,
            text,
            counter=self.counter,
            splitter=self._split,
            max_tokens=self.segment_tokens,
            first_id=state.next_segment_id,
            message_id=state.next_message_id,
            turn=state.turn,
            name=name,
            timestamp=timestamp,
        )

    #: A message longer than this many characters per token of room (`max_tokens` minus
    #: `max_new_tokens`) is refused before it is counted or split: BPE tokens average 3-5
    #: characters, and a whole message averaging more than 64 per token is not real text
    #: (a custom tokenizer that packs more into a token can raise it on its instance).
    MAX_CHARS_PER_TOKEN = 64

    def _new_user(self, text: str) -> tuple[MemoryState, list[Segment]]:
        if not isinstance(text, str):
            raise InvalidMessageError(f"A message must be a str, got {type(text).__name__}.")
        room = self.max_tokens - self.max_new_tokens
        if len(text) > self.MAX_CHARS_PER_TOKEN * room:
            raise MessageTooLongError(
                f"The message has {len(text):,} characters; at most "
                f"{self.MAX_CHARS_PER_TOKEN * room:,} ({self.MAX_CHARS_PER_TOKEN} per token of "
                f"the {room} left by max_tokens={self.max_tokens} and max_new_tokens="
                f"{self.max_new_tokens}) are accepted, and a longer one cannot fit. Shorten it "
                "or raise max_tokens. Nothing was changed.",
                tokens=-(-len(text) // self.MAX_CHARS_PER_TOKEN),
                available=room,
            )
        if not text.strip():
            raise EmptyMessageError("The message is empty: send some text.")
        check_encodable(text, "The message")
        state = self._recounted(self._state)
        return state, self._segments(state, "user", text)

    def _recounted(self, state: MemoryState) -> MemoryState:
        """`state` with the prompt's segments (pins, summary, history) counted under the
        backend's current count, for a backend whose counts change (`count_revision`: a
        hosted backend refitting its correction from usage): one count throughout, so the
        history's sum agrees with the final check. Cheap: the counts are cached per text,
        and a segment whose count did not change is kept as it is. The archive keeps its
        counts (recalled segments are in the final check)."""
        if getattr(self.backend, "count_revision", None) is None:
            return state
        summary = state.summary
        if summary is not None:
            summary = recount([summary], self.counter)[0]
        history = recount(state.history, self.counter)
        pinned = recount(state.pinned, self.counter)
        if summary is state.summary and all(
            a is b for a, b in zip((*history, *pinned), (*state.history, *state.pinned))
        ):
            return state
        return replace(state, pinned=pinned, summary=summary, history=history)

    def _with_pin(self, state: MemoryState, fact: str) -> MemoryState:
        if not isinstance(fact, str) or not fact.strip():
            raise EmptyMessageError("A pinned fact must be non-empty text.")
        check_encodable(fact, "The pinned fact")
        text = fact.strip()
        seg = Segment(
            state.next_segment_id,
            state.next_message_id,
            "system",
            text,
            self.counter.text(text),
            "pinned",
            state.turn,
        )
        new = replace(
            state,
            pinned=(*state.pinned, seg),
            next_segment_id=seg.id + 1,
            next_message_id=seg.message_id + 1,
        )
        self._check_fixed(new)
        return new

    def pin(self, fact: str) -> None:
        """Pin a fact: it stays in the system message of every prompt, never dropped.

        Raises:
            BudgetError: the pins would leave no room for a message; nothing is pinned.
        """
        with self._turn, self._lock:
            self._commit(self._with_pin(self._state, fact))

    def extend(self, messages: Iterable[Message]) -> None:
        """Add history without generating (system messages become pinned facts)."""
        items = list(messages)
        for m in items:
            if not isinstance(m, Message):
                raise InvalidMessageError(
                    f"extend() takes Message objects, got {type(m).__name__}."
                )
        with self._turn, self._lock:
            state = self._state
            for m in items:
                if m.role == "system":
                    state = self._with_pin(state, m.content)
                    continue
                if not m.content.strip():
                    continue
                state = state.append(self._segments(state, m.role, m.content, m.name, m.timestamp))
            added = state.history[len(self._state.history) :]
            self._commit(state)
            self._prepare(added)

    def context(self, text: str) -> list[Message]:
        """Return the exact prompt the next turn would send for `text` (changes nothing)."""
        with self._lock:
            state, new = self._new_user(text)
            return self._planner.plan(state, new, text).messages

    def trace(self, text: str) -> TurnTrace:
        """The [`TurnTrace`][fmai_core.trace.TurnTrace] the next turn would have for `text`.

        The planning of `context` (the same prompt, as `messages`), laid out in its parts
        with what would be evicted and recalled; it changes nothing, and `stats` is `None`.
        """
        from fmai_core.trace import build_trace

        with self._lock:
            state, new = self._new_user(text)
            return build_trace(self._planner, self._planner.plan(state, new, text), new)

    def reset(self) -> None:
        """Forget the conversation (pinned facts included), the cumulative stats and the
        last turn's (`last_stats`, `last_trace`, whose trace quotes the conversation)."""
        with self._turn, self._lock:
            self._commit(MemoryState())
            self._stats = MemoryStats()
            self.last_stats, self.last_trace = None, None
            self._planner.signals = self._signals
            self._planner.index = self._new_index()

    @property
    def model_signals(self) -> bool:
        """Whether the policy gets the backend's model signals.

        They are switched off for the rest of the conversation (until `reset`) when a policy
        call using them runs past `max_policy_ms` in a turn that commits (never by
        `context()`, which has no side effect): on a CPU a model's forward pass or a
        generated summary often costs more than the latency budget, and the policies'
        torch-free proxies then keep the turn on time. `TurnStats.policy_stats` says so
        (`"model_signals"`) on the turn it happens.
        """
        from fmai_core.policies.base import Signals

        return self._planner.signals != Signals()

    def _commit(self, state: MemoryState) -> None:
        self._state = state
        self._version += 1

    def _index(self, segments: Sequence[Segment], dropped: Sequence[Segment] = ()) -> None:
        """Add segments now in memory to the recall index (embedded in one batch), and
        forget there the `dropped` segments of a full archive: the index then holds what one
        built from the record holds (as `load` builds it), so a saved conversation recalls
        the same after `load`, and dropped messages weigh nothing in its term statistics."""
        index = self._planner.index
        if dropped:
            from fmai_core.segments import find_by_id

            state = self._state
            # the parts of a message have consecutive ids: look up what is left of each
            ids = sorted({s.id - s.part + i for s in dropped for i in range(s.parts)})
            left: dict[int, list[Segment]] = {}
            for s in sorted(
                [*find_by_id(state.archive, ids), *find_by_id(state.history, ids)],
                key=lambda s: s.id,
            ):
                left.setdefault(s.message_id, []).append(s)
            index.forget({s.message_id for s in dropped}, left)
        index.add(segments, embed=self._planner.signals.embed)
        state = self._state
        live = len(state.history) + len(state.archive)
        if index.size > 2 * live + 64:  # the archive dropped messages: forget them
            index.prune({s.message_id for s in (*state.history, *state.archive)})

    def _prepare(self, segments: Sequence[Segment], dropped: Sequence[Segment] = ()) -> float:
        """Let the policy precompute what it needs from segments now in memory; return ms.

        Called once memory is committed. A failure only costs speed later (the work is done
        at the next eviction or recall instead), so it warns and the turn stands.
        """
        start = time.perf_counter()
        try:
            self._index(segments, dropped)
            self._planner.policy.prepare(segments)
        except Exception as exc:
            warnings.warn(
                f"{type(self._planner.policy).__name__}.prepare failed ({exc!r}); the turn is "
                "stored, and the policy will do that work on its next call.",
                RuntimeWarning,
                stacklevel=3,
            )
        return (time.perf_counter() - start) * 1000

    # -- turns ----------------------------------------------------------------------------
    def _params(self, params: dict[str, Any]) -> dict[str, Any]:
        merged = {**self.generation, **params}
        if params:
            _check_generation(params)
        asked = merged.get("max_new_tokens")
        if asked is None:
            asked = self.max_new_tokens
        _check_int("max_new_tokens", asked, 1, f" (at most {self.max_new_tokens} are generated)")
        merged["max_new_tokens"] = min(asked, self.max_new_tokens)
        return merged

    def _plan_turn(self, text: str) -> tuple[int, MemoryState, list[Segment], Plan, float]:
        start = time.perf_counter()
        with self._lock:
            state, new = self._new_user(text)
            return self._version, state, new, self._planner.plan(state, new, text), start

    def _finish(
        self,
        version: int,
        new: list[Segment],
        plan: Plan,
        gen: Generation,
        start: float,
        gen_start: float,
    ) -> ChatResult:
        with self._lock:
            if version != self._version:
                raise FMAIError(
                    "The conversation changed while this turn was running. The reply was not "
                    "stored; retry the turn."
                )
            state = plan.state.append(new)
            gen = _storable(gen)
            reply = self._segments(state, "assistant", gen.text) if gen.text.strip() else []
            state = replace(state.append(reply), turn=state.turn + 1)
            self._commit(state)
            if plan.signals_off:  # a policy call with model signals missed the deadline
                from fmai_core.policies.base import Signals

                self._planner.signals = Signals()
            prepare_ms = self._prepare([*new, *reply], plan.dropped_segments)
            u, estimated = _usage(gen, self.counter)
            prompt = u.prompt_tokens or plan.prompt_tokens
            if not u.prompt_tokens:  # the backend reported no prompt: the planner's count
                estimated += ["prompt_tokens", "prefill_tokens"]
            reused = None if u.reused_tokens is None else min(u.reused_tokens, prompt)
            prefill = u.prefill_tokens or max(prompt - (reused or 0), 0)
            if {"prompt_tokens", "completion_tokens"} & set(estimated):
                estimated.append("context_tokens")
            estimated = list(dict.fromkeys(estimated))
            # ttft from the turn's start, like latency: planning, then the backend's wait
            ttft = (gen_start - start) * 1000 + gen.ttft_ms
            stats = TurnStats(
                turn=state.turn - 1,
                prompt_tokens=prompt,
                reused_tokens=reused,
                prefill_tokens=prefill,
                completion_tokens=u.completion_tokens,
                context_tokens=prompt + u.completion_tokens,
                evicted_tokens=plan.evicted_tokens,
                recalled_tokens=sum(s.tokens for s in plan.recalled),
                summary_tokens=plan.state.summary.tokens if plan.state.summary else 0,
                latency_ms=(time.perf_counter() - start) * 1000,
                ttft_ms=ttft,
                policy=plan.policy,
                policy_ms=plan.policy_ms + prepare_ms,
                fallback=plan.fallback,
                evicted=plan.evicted,
                policy_stats=_telemetry_safe(plan.policy_stats),
                estimated=tuple(estimated),
                kv=dict(gen.extra.get("kv") or {}),
            )
            t = self._stats
            t.turns += 1
            t.prompt_tokens += stats.prompt_tokens
            if stats.reused_tokens is None:
                t.unreported_reuse_turns += 1
            else:
                t.reused_tokens += stats.reused_tokens
            t.prefill_tokens += stats.prefill_tokens
            t.completion_tokens += stats.completion_tokens
            t.evicted_tokens += stats.evicted_tokens
            t.evictions += int(stats.evicted)
            t.fallbacks += int(stats.fallback)
        from fmai_core.trace import build_trace

        trace = build_trace(self._planner, plan, new).with_stats(stats)
        self.last_trace, self.last_stats = trace, stats
        if self.hooks:
            from fmai_core.telemetry.hooks import call_hooks

            call_hooks(self.hooks, stats)
        return ChatResult(gen.text, stats, trace)

    async def _afinish(
        self,
        version: int,
        new: list[Segment],
        plan: Plan,
        gen: Generation,
        start: float,
        gen_start: float,
    ) -> ChatResult:
        """`_finish` in a worker thread, as the planning: the commit embeds the new segments
        (a model's forward pass, with a model embedder) and runs the hooks, which must not
        block the event loop. A turn cancelled here is committed: the commit runs to its
        end before the turn is handed on, then the cancellation goes on."""

        def finish_here() -> ChatResult:
            with self._turn.guest():  # a hook that starts a turn here is refused
                return self._finish(version, new, plan, gen, start, gen_start)

        return await to_thread_to_its_end(finish_here)

    @staticmethod
    def _backend_error(exc: Exception) -> FMAIError:
        if isinstance(exc, FMAIError):
            return exc
        return BackendError(
            f"The backend failed: {type(exc).__name__}: {exc}. The turn was not stored; "
            "check the backend and retry."
        )

    def chat(self, text: str, **params: Any) -> ChatResult:
        """Send `text`, return the reply and the turn's figures.

        `params` override the default generation parameters for this turn; `max_new_tokens`
        must be an int of at least 1 (`None`: the default) and is capped at the configured
        `max_new_tokens`. A reply holding lone surrogates (text no UTF-8 encoder accepts) is
        stored, and returned, with each replaced by U+FFFD, so that it can always be saved.

        Raises:
            ConfigurationError: `max_new_tokens` is not an int of at least 1.
            EmptyMessageError: `text` is empty.
            InvalidMessageError: `text` is not a str, or holds a lone surrogate (it cannot be
                encoded as UTF-8; decode the bytes it came from with `errors="replace"`).
            MessageTooLongError: `text` cannot fit even with all history evicted.
            BackendError: the backend failed; memory is unchanged.
            FMAIError: called while this thread is inside a turn of the same conversation
                (iterating its stream, or in its hook), which would otherwise deadlock.

        Turns take turns: calls from several threads, and `achat`/`astream` from any event
        loop, wait for the conversation, first come first served; a turn holds it from
        planning to commit (and through its hooks), and `pin`, `extend` and `reset` wait
        too. `context`, `stats` and `save` do not wait for a running turn: they see the
        last committed state.
        """
        params = self._params(params)
        with self._turn:
            version, _, new, plan, start = self._plan_turn(text)
            gen_start = time.perf_counter()
            try:
                gen = self.backend.generate(plan.messages, **params)
            except Exception as exc:
                raise self._backend_error(exc) from exc
            return self._finish(version, new, plan, gen, start, gen_start)

    def stream(self, text: str, **params: Any) -> Iterator[str]:
        """Yield the reply's text as it arrives; the turn is stored when the stream ends.

        After the stream is exhausted, `last_stats` holds the turn's figures. A stream that
        is closed early or fails stores nothing. From its first chunk until it is exhausted
        or closed, a stream holds the conversation (other turns wait, see `chat`): close a
        stream you stop reading (`it.close()`, or `contextlib.closing`); one that is dropped
        is closed when it is garbage-collected.
        """
        params = self._params(params)
        with self._turn:
            version, _, new, plan, start = self._plan_turn(text)
            gen_start = time.perf_counter()
            gen: Generation | None = None
            parts: list[str] = []
            try:
                for chunk in self.backend.stream(plan.messages, **params):
                    if chunk.text:
                        piece = _encodable(chunk.text)  # what is yielded is what is stored
                        parts.append(piece)
                        yield piece
                    if chunk.generation is not None:
                        gen = chunk.generation
            except GeneratorExit:
                raise
            except Exception as exc:
                raise self._backend_error(exc) from exc
            gen = _complete(gen, "".join(parts), start)
            self._finish(version, new, plan, gen, start, gen_start)

    #: The [`TurnStats`][fmai_core.stats.TurnStats] of the last turn that committed (of any
    #: kind: `stream` and `astream` return none, and a turn committed while it was being
    #: cancelled is there too).
    last_stats: TurnStats | None = None
    #: The [`TurnTrace`][fmai_core.trace.TurnTrace] of the last turn that committed.
    last_trace: TurnTrace | None = None

    async def achat(self, text: str, **params: Any) -> ChatResult:
        """Async [`chat`][fmai_core.engine.FiniteMemoryLLM.chat]; concurrent calls take turns.

        Waiting for the conversation never blocks the event loop, and works from any loop
        and thread (each `asyncio.run()` included); a cancelled waiter gives up its place.
        Planning and the commit (which embeds the new segments and runs the hooks) run in
        worker threads, off the loop. A turn cancelled before its commit stores nothing;
        one cancelled during its commit is committed, then the cancellation goes on.
        """
        import asyncio  # imported here: keeps `import fmai_core` fast

        params = self._params(params)
        await self._turn.acquire_async()
        try:
            version, _, new, plan, start = await to_thread_to_its_end(self._plan_turn, text)
            gen_start = time.perf_counter()
            try:
                if isinstance(self.backend, AsyncBackend):
                    gen = await self.backend.agenerate(plan.messages, **params)
                else:
                    gen = await asyncio.to_thread(self.backend.generate, plan.messages, **params)
            except Exception as exc:
                raise self._backend_error(exc) from exc
            return await self._afinish(version, new, plan, gen, start, gen_start)
        finally:
            self._turn.release()

    async def astream(self, text: str, **params: Any) -> AsyncGenerator[str, None]:
        """Async [`stream`][fmai_core.engine.FiniteMemoryLLM.stream] (it holds the turn alike)."""
        import asyncio

        params = self._params(params)
        await self._turn.acquire_async()
        try:
            version, _, new, plan, start = await to_thread_to_its_end(self._plan_turn, text)
            gen_start = time.perf_counter()
            gen: Generation | None = None
            parts: list[str] = []
            try:
                if isinstance(self.backend, AsyncBackend):
                    chunks = self.backend.astream(plan.messages, **params)
                    try:
                        async for chunk in chunks:
                            if chunk.text:
                                piece = _encodable(chunk.text)  # what is yielded is stored
                                parts.append(piece)
                                yield piece
                            if chunk.generation is not None:
                                gen = chunk.generation
                    finally:
                        # closed before the turn is handed on (left to the garbage
                        # collector, the backend's stream would run on meanwhile)
                        close = getattr(chunks, "aclose", None)
                        if close is not None:
                            await close()
                else:
                    gen = _storable(
                        await asyncio.to_thread(self.backend.generate, plan.messages, **params)
                    )
                    parts.append(gen.text)
                    yield gen.text
            except Exception as exc:
                raise self._backend_error(exc) from exc
            gen = _complete(gen, "".join(parts), start)
            await self._afinish(version, new, plan, gen, start, gen_start)
        finally:
            self._turn.release()

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, path: str | PathLike[str], *, kv: bool = False) -> None:
        """Write a checkpoint atomically (see [`checkpoint`][fmai_core.checkpoint]).

        `kv=True` also writes the backend's KV cache beside it, to `PATH.kv.safetensors`
        (a backend with `save_kv`, such as `HFBackend`; others warn), tied to this
        checkpoint's checksum: `load` restores it only beside this exact checkpoint.
        """
        from fmai_core.checkpoint import write_checkpoint

        snap = self.snapshot()
        with self._save_lock:  # encode and fsync outside the conversation's lock
            digest = write_checkpoint(snap, path, self._save_fragments)
        if kv:
            save_kv = getattr(self.backend, "save_kv", None)
            if save_kv is None:
                warnings.warn(
                    f"{type(self.backend).__name__} cannot save its KV cache; only the "
                    "checkpoint was written.",
                    stacklevel=2,
                )
            else:
                save_kv(kv_path(path), digest)

    def snapshot(self) -> Snapshot:
        """What a checkpoint of this conversation holds, as one consistent, immutable
        [`Snapshot`][fmai_core.checkpoint.Snapshot] (taken under the conversation's lock;
        encode or write it with the [`checkpoint`][fmai_core.checkpoint] functions)."""
        from fmai_core.checkpoint import Snapshot, policy_fields

        with self._lock:
            return Snapshot(
                tokenizer_id=self.backend.tokenizer_id,
                backend=getattr(self.backend, "name", type(self.backend).__name__),
                config=self.config,
                policy=self.policy.name,
                policy_config=policy_fields(self.policy),
                generation=dict(self.generation),
                state=self._state,
                stats=replace(self._stats),
                vectors=self._planner.index.vectors_to_dict(),
            )

    @classmethod
    def load(
        cls,
        path: str | PathLike[str],
        backend: Backend,
        *,
        recount: bool = False,
        kv: bool | None = None,
        **overrides: Any,
    ) -> FiniteMemoryLLM:
        """Restore a conversation saved with `save`; `overrides` replace saved settings.

        The KV cache saved beside it (`save(path, kv=True)`) is restored into a backend with
        `load_kv` when the file is there (`kv=None`), unless `kv=False`. One that is damaged
        or made for another model, dtype, tokenizer or checkpoint is refused with a warning
        (and, with `kv=True`, a missing one): the first turn then recomputes its prompt.

        A checkpoint written under another tokenizer has its token counts recomputed from
        the text when either tokenizer is fmai's estimate (`fmai-estimate-*`), or when
        `recount=True`; a change between two real tokenizers raises `CheckpointError`
        otherwise. `recounted_from` then names the old tokenizer (see
        [`checkpoint`][fmai_core.checkpoint]).
        """
        from fmai_core.checkpoint import read_checkpoint

        snap = read_checkpoint(path, backend.tokenizer_id, recount=recount)
        llm = cls._restore(snap, path, backend, overrides)
        if kv is not False:
            _restore_kv(backend, path, warn_missing=kv is True)
        return llm

    @classmethod
    def _restore(
        cls,
        snap: Snapshot,
        path: str | PathLike[str],
        backend: Backend,
        overrides: dict[str, Any],
    ) -> FiniteMemoryLLM:
        """A conversation continued from `snap` (read from `path`); `overrides` replace
        saved settings (`policy=`, `generation=`, a `MemoryConfig` field or `config=`)."""
        from fmai_core.checkpoint import recount_state, saved_policy

        given = overrides.pop("generation", None) or {}
        saved = {k: v for k, v in snap.generation.items() if k not in given}
        try:  # what a turn would refuse, refused now and blamed on the file
            _check_generation(saved)
            if saved.get("max_new_tokens") is not None:
                _check_int("max_new_tokens", saved["max_new_tokens"], 1)
        except ConfigurationError as exc:
            raise CheckpointError(
                f"{path} holds a generation setting no turn could use: {exc} Load it with "
                "generation={...} to replace it."
            ) from None
        generation = {**snap.generation, **given}
        policy = overrides.pop("policy", None)
        if policy is None:
            policy = saved_policy(snap, path)
        config = snap.config
        changes = {k: overrides.pop(k) for k in MemoryConfig.names() if k in overrides}
        if "config" in overrides:  # a whole MemoryConfig replaces the saved one
            config = overrides.pop("config")
        elif changes:
            config = replace(config, **changes)  # validated again: a bad override raises
        llm = cls(backend, policy=policy, config=config, generation=generation, **overrides)
        state = snap.state
        if snap.tokenizer_id != backend.tokenizer_id:
            import logging

            state = recount_state(state, llm.counter)
            llm.recounted_from = snap.tokenizer_id
            logging.getLogger("fmai").info(
                "fmai: %s was counted under %r; re-counted its %d segments under %r",
                path,
                snap.tokenizer_id,
                len(state.pinned) + len(state.history) + len(state.archive),
                backend.tokenizer_id,
            )
        llm._check_fixed(state)
        if snap.vectors is not None:  # embeddings of the same embedder are not computed again
            try:
                llm._planner.index.load_vectors(snap.vectors)
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(
                    f"{path} is damaged: its embeddings ({exc}). Restore a backup."
                ) from None
        llm._commit(state)
        # in conversation order, as the turns indexed them: the recall index scans a common
        # term's newest postings, so an index built history-first recalls other messages
        llm._prepare(sorted([*state.history, *state.archive], key=lambda s: s.id))
        llm._stats = replace(snap.stats)
        return llm

    #: The `tokenizer_id` a loaded checkpoint was counted under, when `load` re-counted it
    #: under this backend's tokenizer; `None` otherwise.
    recounted_from: str | None = None

    def __repr__(self) -> str:
        return (
            f"FiniteMemoryLLM(backend={getattr(self.backend, 'name', '?')!r}, "
            f"policy={self.policy.name!r}, max_tokens={self.max_tokens})"
        )

    def segments(self) -> list[Segment]:
        """Every segment of the record (archive and history), in conversation order.

        A long message is several segments (its parts); pinned facts and the rolling summary
        are not in the record (they are in [`state`][fmai_core.engine.FiniteMemoryLLM.state]).
        """
        s = self._state
        return sorted((*s.archive, *s.history), key=lambda seg: seg.id)

    def messages(self) -> list[Message]:
        """The record (archive and history) as messages, in conversation order.

        Each message comes back whole and verbatim (its parts joined with the whitespace
        between them), with its `name` and `timestamp`; the parts of a message that a full
        archive dropped (see `archive_limit`) are missing from it. Use
        [`segments`][fmai_core.engine.FiniteMemoryLLM.segments] for the units the policies
        choose from, with their token counts.
        """
        out: list[Message] = []
        texts: list[list[str]] = []
        heads: list[Segment] = []
        for seg in self.segments():
            if heads and heads[-1].message_id == seg.message_id:
                texts[-1] += [seg.sep, seg.text]
            else:
                heads.append(seg)
                texts.append([seg.text])
        for head, parts in zip(heads, texts):
            role = cast(Role, head.role)
            out.append(Message(role, "".join(parts), head.name, head.timestamp))
        return out


def _usage(gen: Generation, counter: TokenCounter) -> tuple[Usage, list[str]]:
    """The generation's usage with every figure a token count, and the estimated fields.

    A figure that is not a count ([`token_count`][fmai_core.backend.token_count]: negative,
    fractional, not a number) is replaced by fmai's own (the prompt by the planner's, the
    reply by its text's count) and named estimated, so stats and checkpoints hold counts.
    """
    u = gen.usage
    estimated = list(getattr(u, "estimated", ()))
    prompt = token_count(u.prompt_tokens)
    reused = None if u.reused_tokens is None else token_count(u.reused_tokens)
    prefill = token_count(u.prefill_tokens)
    completion = token_count(u.completion_tokens)
    if completion == 0 and gen.text.strip():  # a reply of text is not 0 tokens: unreported
        completion = None
    if reused is None and u.reused_tokens is not None:
        estimated.append("reused_tokens")
    if prompt is not None and reused is not None:
        reused = min(reused, prompt)
    if prefill is None or (prompt is not None and prefill > prompt):
        prefill = 0  # worked out from the prompt and the reuse
        if prompt is not None:
            estimated.append("prefill_tokens")
    if completion is None:
        completion = counter.text(gen.text)
        estimated.append("completion_tokens")
    fixed = Usage(prompt or 0, reused, prefill, completion, tuple(estimated))
    return fixed, estimated


def _storable(gen: Generation) -> Generation:
    """Replace lone surrogates in a reply with U+FFFD: what is stored must be savable."""
    text = _encodable(gen.text)
    return gen if text is gen.text else replace(gen, text=text)


_REALS = ("temperature", "top_p", "repetition_penalty")
_INTS = ("top_k", "seed", "min_new_tokens")


def _check_generation(params: Mapping[str, Any]) -> None:
    """Refuse generation parameters no backend can use, before any turn (or load) takes them.

    The documented ones (`GENERATION_PARAMS`) must have their types (`None`: the backend's
    default): a number for `temperature`, `top_p` and `repetition_penalty`, an int for
    `top_k`, `seed` and `min_new_tokens`, a string or strings for `stop`. `messages` is the
    prompt itself, never a parameter. Other names pass to the backend as they are.
    """
    import math
    from numbers import Integral, Real  # numpy's scalars included

    if "messages" in params:
        raise ConfigurationError(
            "'messages' cannot be a generation parameter: the prompt is what fmai plans. "
            "Remove it from generation= (or from the checkpoint's settings)."
        )
    for name, value in params.items():
        if value is None:
            continue
        if name in _REALS:
            ok = isinstance(value, Real) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0:
                raise ConfigurationError(
                    f"{name} must be a finite number of at least 0 (or None), got {value!r}."
                )
        elif name in _INTS:
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise ConfigurationError(f"{name} must be an int (or None), got {value!r}.")
            if name != "seed" and value < 0:
                raise ConfigurationError(f"{name} must be at least 0, got {value!r}.")
        elif name == "stop":
            many = isinstance(value, list | tuple)
            if not isinstance(value, str) and not (many and all(isinstance(x, str) for x in value)):
                raise ConfigurationError(
                    f"stop must be a string or a list of strings (or None), got {value!r}."
                )


def _check_params(params: Mapping[str, Any]) -> None:
    for name in params:
        if name in GENERATION_PARAMS:
            continue
        import difflib
        import inspect

        settings = [
            p
            for p in inspect.signature(FiniteMemoryLLM.__init__).parameters
            if p not in ("self", "params")
        ]
        close = difflib.get_close_matches(name, [*settings, *sorted(GENERATION_PARAMS)], 1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ConfigurationError(
            f"FiniteMemoryLLM got an unknown keyword argument {name!r}{hint} Settings: "
            f"{', '.join(settings)}; generation parameters: "
            f"{', '.join(sorted(GENERATION_PARAMS))}. Pass any other backend parameter in "
            f"generation={{{name!r}: ...}}."
        )


# What the planner writes in a fallback reason: its own words and exception type names.
_SAFE_REASON = re.compile(
    r"deadline of [0-9.e+-]+ ms exceeded|(policy raised )?[A-Za-z_][A-Za-z0-9_.]*"
)


def kv_path(path: str | PathLike[str]) -> str:
    """Where `FiniteMemoryLLM.save(path, kv=True)` writes the KV cache: `PATH.kv.safetensors`."""
    return f"{path}.kv.safetensors"


def _restore_kv(backend: Backend, path: str | PathLike[str], warn_missing: bool) -> None:
    import json
    import os

    load_kv = getattr(backend, "load_kv", None)
    where = kv_path(path)
    if load_kv is None or not os.path.exists(where):
        if warn_missing:
            warnings.warn(
                f"No KV cache to restore beside {path}: the first turn recomputes its prompt.",
                stacklevel=3,
            )
        return
    try:
        with open(path, encoding="utf-8") as f:
            tag = str(json.load(f).get("checksum", ""))
    except (OSError, ValueError):
        tag = ""
    reason = load_kv(where, tag)
    if reason is not None:
        warnings.warn(
            f"The KV cache {where} was not restored ({reason}): the first turn recomputes "
            "its prompt.",
            stacklevel=3,
        )


def _telemetry_safe(stats: dict[str, Any]) -> dict[str, Any]:
    """Keep user text out of telemetry: a fallback reason is fmai's words or a type name.

    An exception's message can quote the conversation, so a reason that is anything else
    is cut to the exception type and a fixed description (the message itself goes to the
    `fmai` logger only).
    """
    out = dict(stats)
    for key, value in stats.items():
        if key.endswith("fallback_reason") and not (
            isinstance(value, str) and _SAFE_REASON.fullmatch(value)
        ):
            kind = str(value).split(":", 1)[0].strip()
            kind = kind if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", kind) else "an error"
            out[key] = f"policy raised {kind} (details on the 'fmai' logger)"
    return out


def _complete(gen: Generation | None, text: str, start: float) -> Generation:
    if gen is None:
        raise BackendError(
            "The backend's stream ended without its final chunk (a StreamChunk with "
            "`.generation`), so the reply may be incomplete; the turn was not stored. Retry; "
            "a custom backend must end its stream with StreamChunk('', generation=...)."
        )
    if not gen.text and text:
        return replace(gen, text=text)
    return gen
