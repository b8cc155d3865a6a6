"""Conversations of `fmai serve`: one `FiniteMemoryLLM` per conversation, kept in the store.

A turn on conversation *c* runs under *c*'s lock in this process (turns of one
conversation take turns, first come first served; other conversations run in parallel) and
under the store's lock or check across processes (see [`store`][fmai_torch.serve.store]):

1. open the turn in the store and read the conversation's `etag`;
2. take the engine from the in-process cache when its `etag` matches, else load it from the
   stored checkpoint (after a restart, or when another process moved the conversation on);
3. reconcile the request's history with the stored record
   ([`reconcile`][fmai_torch.serve.sessions.reconcile]);
4. generate (the memory policy builds the prompt), then commit the checkpoint and the
   turn's messages in one transaction; only then is the reply acknowledged.

A failure at any step (a bad request, the upstream, the store) rolls the transaction back
and drops the engine from the cache, so the next turn starts again from what is stored:
memory is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.config import MemoryConfig
from fmai_core.errors import CheckpointError
from fmai_core.messages import Role
from fmai_torch.serve.protocol import ApiError, ChatRequest
from fmai_torch.serve.store import NewMessage, Store, TurnRecord, TurnTx

T = TypeVar("T")

__all__ = ["EngineFactory", "Sessions", "Started", "TurnOutcome", "reconcile", "turn_summary"]


class EngineFactory:
    """Builds, loads and dumps the engines of one server (one backend, one set of defaults)."""

    def __init__(
        self,
        backend: Any,
        *,
        policy: str = "hybrid",
        max_tokens: int = 2048,
        max_new_tokens: int = 256,
        system: str | None = None,
        max_policy_ms: float | None = None,
        hooks: Sequence[Any] = (),
    ) -> None:
        self.backend = backend
        self.policy, self.max_tokens, self.max_new_tokens = policy, max_tokens, max_new_tokens
        self.system, self.max_policy_ms = system, max_policy_ms
        self.hooks = list(hooks)
        self._tmp = Path(tempfile.mkdtemp(prefix="fmai-serve-"))
        self.new(None)  # check the settings now, not on the first request

    def backend_for(self, key: tuple[str, str] | None) -> Any:
        """The backend a conversation runs on: with a local model
        ([`HFBackend`][fmai_torch.HFBackend]), its own KV cache in the backend's pool
        ([`HFBackend.conversation`][fmai_torch.HFBackend.conversation]), keyed by owner
        and id, so that interleaved conversations each reuse their own prefix; otherwise
        (an upstream, a one-off turn: `key` `None`) the backend itself."""
        if key is None or not hasattr(self.backend, "conversation"):
            return self.backend
        owner, cid = key
        return self.backend.conversation(f"{len(owner)}:{owner}:{cid}")

    def forget(self, key: tuple[str, str]) -> None:
        """Drop a conversation's KV cache (a local model's pool), if it has one."""
        if hasattr(self.backend, "conversation"):
            self.backend_for(key).reset_cache()

    def new(self, system: str | None, key: tuple[str, str] | None = None) -> FiniteMemoryLLM:
        """A fresh conversation (`system`: the client's system prompt, else the server's;
        `key`: its owner and id, see
        [`backend_for`][fmai_torch.serve.sessions.EngineFactory.backend_for])."""
        return FiniteMemoryLLM(
            self.backend_for(key),
            policy=self.policy,
            max_tokens=self.max_tokens,
            max_new_tokens=self.max_new_tokens,
            system_prompt=system if system is not None else self.system,
            hooks=self.hooks,
            # `None` here means fmai-core's default budget (in fmai-core it means no budget)
            max_policy_ms=(
                MemoryConfig().max_policy_ms if self.max_policy_ms is None else self.max_policy_ms
            ),
        )

    def load(
        self, document: str, cid: str = "?", key: tuple[str, str] | None = None
    ) -> FiniteMemoryLLM:
        """The conversation of a stored checkpoint document (checked as `load` checks a file;
        `key`: its owner and id, see
        [`backend_for`][fmai_torch.serve.sessions.EngineFactory.backend_for]).

        Raises:
            CheckpointError: the document cannot be loaded; its message names conversation
                `cid` (not the scratch file) and says what the client can do.
        """
        path = self._tmp / f"{uuid.uuid4().hex}.json"
        path.write_text(document, encoding="utf-8")
        try:
            # kv=False: a KV file is never looked for beside the scratch file
            backend = self.backend_for(key)
            return FiniteMemoryLLM.load(path, backend, kv=False, hooks=self.hooks)
        except CheckpointError as exc:
            raise unloadable(cid, str(exc).replace(str(path), "its stored checkpoint")) from None
        finally:
            path.unlink(missing_ok=True)

    @staticmethod
    def dump(llm: FiniteMemoryLLM, fragments: dict[int, Any] | None = None) -> str:
        """The checkpoint document of `llm`, as `save` writes it (checksum included), as
        compact JSON; `fragments`: the conversation's cache of its segments' JSON
        ([`document_text`][fmai_core.checkpoint.document_text]), so a turn encodes its
        new segments, not the whole archive again."""
        from fmai_core.checkpoint import document_text

        return document_text(llm.snapshot(), fragments)

    def close(self) -> None:
        """Remove the scratch folder (again: nothing)."""
        for p in self._tmp.glob("*"):
            p.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self._tmp)


def unloadable(cid: str, reason: str) -> CheckpointError:
    """The error for conversation `cid`, whose stored checkpoint cannot be used (`reason`)."""
    return CheckpointError(
        f"Conversation {cid!r} cannot be loaded: {reason} Nothing was changed. Its messages "
        f"can still be read (GET /v1/conversations/{cid}/messages); DELETE "
        f"/v1/conversations/{cid} forgets it, so that the id starts again."
    )


@dataclass(frozen=True)
class Started:
    """The first event of a turn: the conversation it runs on (a fork's new id)."""

    conversation_id: str | None
    forked_from: str | None = None


@dataclass(frozen=True)
class TurnOutcome:
    """The last event of a committed turn."""

    conversation_id: str | None
    text: str
    stats: dict[str, Any]
    finish_reason: str
    trace: dict[str, Any] | None = None


def turn_summary(trace: dict[str, Any]) -> dict[str, Any]:
    """The small summary of a turn's trace (`TurnTrace.to_dict`) that listings and plots use."""
    stats = trace["stats"] or {}
    return {
        "turn": trace["turn"],
        "prompt_tokens": trace["prompt_tokens"],
        "part_tokens": trace["part_tokens"],
        "overhead_tokens": trace["overhead_tokens"],
        "evicted_segments": len(trace["evicted"]),
        "evicted_tokens": sum(s["tokens"] for s in trace["evicted"]),
        "recalled_segments": len(trace["recalled"]),
        "archive_segments": trace["archive_segments"],
        "archive_tokens": trace["archive_tokens"],
        "policy": trace["policy"],
        "stats": {k: stats.get(k) for k in _SUMMARY_STATS},
    }


#: The `TurnStats` fields a turn's summary keeps (the whole stats are in its trace).
_SUMMARY_STATS = (
    "turn", "prompt_tokens", "reused_tokens", "prefill_tokens", "completion_tokens",
    "evicted_tokens", "recalled_tokens", "latency_ms", "ttft_ms", "policy_ms", "evicted",
    "fallback",
)  # fmt: skip


def _norm(messages: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(r, c.strip()) for r, c in messages if c.strip()]


def reconcile(
    stored: Sequence[tuple[str, str]] | None,
    stored_system: str | None,
    system: str | None,
    history: Sequence[tuple[Role, str]],
) -> list[tuple[Role, str]] | None:
    """What of the request's `history` to append to the stored record; `None`: fork.

    Messages compare by role and text (surrounding whitespace and empty messages ignored).

    - no history sent (the client sends only its new message): append nothing;
    - the stored record is a prefix of the history sent (the client sends its whole
      history): append the rest, the messages the server has not stored yet;
    - the history sent is the end of the stored record (a client that keeps a window):
      append nothing;
    - anything else, or a system prompt that differs from the stored one: the history
      contradicts the record, and the turn is forked into a new conversation.
    """
    if stored is None:
        return list(history)
    if system is not None and system.strip() != (stored_system or "").strip():
        return None
    sent, record = _norm(history), _norm(stored)
    if not sent:
        return []
    if sent[: len(record)] == record:
        return [m for m in history if m[1].strip()][len(record) :]
    if len(sent) <= len(record) and record[len(record) - len(sent) :] == sent:
        return []
    return None


def _check_reply(text: str) -> None:
    """Refuse a reply holding U+0000, on every store alike (PostgreSQL's text cannot hold
    it, and a client sending its history back would get a 400 for it): 502, nothing stored.
    """
    if "\x00" in text:
        raise ApiError(
            502,
            "The model's reply holds a NUL character (U+0000), which fmai serve does not "
            "store or send: the turn was not stored and memory is unchanged. Retry it.",
            type="api_error",
            code="upstream_invalid_reply",
        )


async def _on_tx(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, a read on a turn's transaction, in a worker thread. A turn cancelled
    meanwhile waits for the read to end before it goes on (and closes the transaction):
    its connection is never used by two threads at once, nor pooled while still in use."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


def _close_late(opening: asyncio.Future[TurnTx]) -> None:
    """Close a turn's transaction that was opened after its turn was cancelled."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


@dataclass
class _Cached:
    llm: FiniteMemoryLLM
    etag: str
    #: The JSON of the segments of its last checkpoint (see `EngineFactory.dump`).
    fragments: dict[int, Any]
    #: Characters of its last checkpoint document: what the cache's byte budget counts.
    size: int = 0


class Sessions:
    """Runs turns on stored conversations.

    Args:
        store: Where conversations live.
        factory: Builds the engines.
        serial: Generate one reply at a time (a local model has one KV cache).
        cache_size: Engines kept in memory, least recently used dropped first.
        cache_bytes: The most their checkpoints may weigh together (characters of the
            checkpoint documents, a proxy for the memory an engine holds: its archive's
            text, index and vectors); least recently used dropped first. An engine whose
            checkpoint alone is over it is not kept (each turn loads it again).
    """

    def __init__(
        self,
        store: Store,
        factory: EngineFactory,
        *,
        serial: bool = False,
        cache_size: int = 256,
        cache_bytes: int = 256 << 20,
    ) -> None:
        self.store, self.factory = store, factory
        self.cache_size, self.cache_bytes = cache_size, cache_bytes
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._cache_total = 0  # the sizes of the engines in `_cache`
        self._locks: dict[tuple[str, str], list[Any]] = {}
        self._serial = asyncio.Semaphore(1) if serial else None

    @asynccontextmanager
    async def _local(self, key: tuple[str, str]) -> AsyncIterator[None]:
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]

    def forget(self, owner: str, cid: str) -> None:
        """Drop a conversation's engine from the cache, and its KV cache (a local model)."""
        self._take((owner, cid))
        self.factory.forget((owner, cid))

    async def turn(
        self, owner: str, cid: str | None, req: ChatRequest
    ) -> AsyncGenerator[Started | str | TurnOutcome, None]:
        """Run one turn: yield `Started`, the reply's text pieces, then the `TurnOutcome`.

        Nothing is stored when the iterator is closed before the `TurnOutcome`.
        """
        if cid is None:  # one-off: the memory policy applies, nothing is stored
            one_off = await asyncio.to_thread(self.factory.new, req.system)
            await self._extend(one_off, req.history)
            yield Started(None)
            async for event in self._generate(one_off, req, None):
                yield event
            return
        key = (owner, cid)
        async with self._local(key):
            tx = await self._begin(owner, cid)
            try:
                found = await self._engine(tx)
                llm = found.llm if found is not None else None
                fragments = found.fragments if found is not None else {}
                stored_system = llm.system_prompt if llm is not None else None
                stored = await self._stored(tx, req.history)
                extra = reconcile(stored, stored_system, req.system, req.history)
                if extra is not None:
                    if llm is None:
                        llm = await asyncio.to_thread(self.factory.new, req.system, key)
                    yield Started(cid)
                    async for event in self._run(tx, llm, req, extra, fragments):
                        yield event
                    return
            finally:
                tx.close()
        # the history contradicts the record: a new conversation from the client's history
        fork = f"{cid[:180]}.fork-{uuid.uuid4().hex[:12]}"
        async with self._local((owner, fork)):
            tx = await self._begin(owner, fork)
            try:
                llm = await asyncio.to_thread(self.factory.new, req.system, (owner, fork))
                yield Started(fork, forked_from=cid)
                async for event in self._run(tx, llm, req, list(req.history), {}):
                    yield event
            finally:
                tx.close()

    async def _begin(self, owner: str, cid: str) -> TurnTx:
        """`store.begin_turn` in a worker thread (on PostgreSQL it waits for the lock).

        A turn cancelled meanwhile (its client hung up) does not leave the transaction to
        whoever: the thread goes on until it has the lock, and the turn it opened, which
        nobody will run, is closed at once, so the lock is released.
        """
        opening = asyncio.ensure_future(asyncio.to_thread(self.store.begin_turn, owner, cid))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_late)
            raise

    async def _stored(
        self, tx: TurnTx, history: Sequence[tuple[Role, str]]
    ) -> list[tuple[str, str]] | None:
        """The part of the record `reconcile` compares the request's `history` with.

        A record longer than the history sent can only take it as a window of its end
        (or be contradicted by it): then the record's newest messages are read first, as
        many as were sent, and the whole record only when they are not that window. So a
        client that sends the last few messages costs a few rows a turn, however long
        the conversation.
        """
        if tx.row is None:
            return None
        if not history:
            return []
        if tx.row.message_count > len(history):
            tail = [(m.role, m.content) for m in await _on_tx(tx.tail, len(history))]
            sent, end = _norm(history), _norm(tail)
            if sent and len(end) >= len(sent) and end[len(end) - len(sent) :] == sent:
                return tail  # `reconcile` answers for it as for the whole record
        return [(m.role, m.content) for m in await _on_tx(tx.messages)]

    async def _engine(self, tx: TurnTx) -> _Cached | None:
        """The conversation's engine as stored (`None`: a new conversation)."""
        cached = self._take((tx.owner, tx.id))
        if tx.row is None:
            return None
        if cached is not None and cached.etag == tx.etag:
            return cached
        document = await _on_tx(tx.checkpoint)
        key = (tx.owner, tx.id)
        llm = await asyncio.to_thread(self.factory.load, document, tx.id, key)
        return _Cached(llm, tx.etag or "", {}, len(document))

    async def _extend(self, llm: FiniteMemoryLLM, history: Sequence[tuple[Role, str]]) -> None:
        if history:
            await asyncio.to_thread(llm.extend, [Message(r, c) for r, c in history])

    async def _run(
        self,
        tx: TurnTx,
        llm: FiniteMemoryLLM,
        req: ChatRequest,
        extra: list[tuple[Role, str]],
        fragments: dict[int, Any],
    ) -> AsyncIterator[str | TurnOutcome]:
        turn = llm.state.turn
        new = [NewMessage(r, c, turn) for r, c in extra if c.strip()]
        await self._extend(llm, extra)
        outcome: TurnOutcome | None = None
        async for event in self._generate(llm, req, tx.id):
            if isinstance(event, TurnOutcome):
                outcome = event
            else:
                yield event
        assert outcome is not None
        stats = outcome.stats
        new += [
            NewMessage("user", req.message, stats["turn"]),
            NewMessage("assistant", outcome.text, stats["turn"], stats),
        ]
        title = tx.row.title if tx.row is not None else (extra[0][1] if extra else req.message)
        records = []
        if outcome.trace is not None:
            records.append(TurnRecord(stats["turn"], turn_summary(outcome.trace), outcome.trace))
        tokens = (stats["prompt_tokens"], sum(s.tokens for s in llm.state.archive))

        size = 0

        def commit_turn() -> str:  # one trip to a worker thread: encode, then commit
            nonlocal size
            document = self.factory.dump(llm, fragments)
            size = len(document)
            return tx.commit(document, new, llm.state.turn, title, records=records, tokens=tokens)

        commit = asyncio.ensure_future(asyncio.to_thread(commit_turn))
        try:
            etag = await asyncio.shield(commit)
        except asyncio.CancelledError:
            # the client hung up while the commit ran (in its thread, which goes on): keep
            # the conversation's lock until it is done, or the next turn would read the
            # record from before it and be refused (409) when it commits
            await asyncio.wait([commit])
            raise
        self._put((tx.owner, tx.id), _Cached(llm, etag, fragments, size))
        yield outcome

    def _take(self, key: tuple[str, str]) -> _Cached | None:
        """Remove and return a conversation's cached engine (a turn owns it meanwhile)."""
        cached = self._cache.pop(key, None)
        if cached is not None:
            self._cache_total -= cached.size
        return cached

    def _put(self, key: tuple[str, str], cached: _Cached) -> None:
        """Cache an engine as the most recent; drop the least recent past either bound."""
        self._take(key)
        if cached.size > self.cache_bytes:
            return
        self._cache[key] = cached
        self._cache_total += cached.size
        while len(self._cache) > self.cache_size or self._cache_total > self.cache_bytes:
            _, gone = self._cache.popitem(last=False)
            self._cache_total -= gone.size

    async def _generate(
        self, llm: FiniteMemoryLLM, req: ChatRequest, cid: str | None
    ) -> AsyncIterator[str | TurnOutcome]:
        """Generate the reply (text pieces), then a `TurnOutcome` (not yet committed)."""
        limit = llm.max_new_tokens
        if req.max_new_tokens is not None and req.max_new_tokens > limit:
            raise ApiError(
                400,
                f"max_tokens={req.max_new_tokens} is over this conversation's reply budget of "
                f"{limit} tokens (fmai serve --max-new-tokens): ask for at most {limit}. Nothing "
                "was changed.",
                code="max_tokens_exceeded",
                param="max_tokens",
            )
        wanted = req.max_new_tokens or limit
        params = {**req.params, "max_new_tokens": wanted}
        if self._serial is not None:
            await self._serial.acquire()
        try:
            if req.stream:
                parts = []
                # closed here when a piece is refused (left to the garbage collector, the
                # model ran on after the serial slot was handed to the next turn)
                async with contextlib.aclosing(llm.astream(req.message, **params)) as pieces:
                    async for piece in pieces:
                        _check_reply(piece)  # the engine is dropped (not cached) if it raises
                        parts.append(piece)
                        yield piece
                text, stats, trace = "".join(parts), llm.last_stats, llm.last_trace
            else:
                result = await llm.achat(req.message, **params)
                text, stats, trace = result.response, result.stats, result.trace
                _check_reply(text)
        finally:
            if self._serial is not None:
                self._serial.release()
        assert stats is not None
        finish = "length" if stats.completion_tokens >= wanted else "stop"
        record = trace.to_dict() if trace is not None and cid is not None else None
        yield TurnOutcome(cid, text, stats.to_dict(), finish, record)

    async def search(self, owner: str, cid: str, query: str) -> dict[str, Any] | None:
        """The trace the next turn would have for `query` (what would be recalled, with
        scores), from the conversation as stored; `None`: no such conversation.

        It uses `FiniteMemoryLLM.trace` (the planning of `context()`): nothing is stored and
        the conversation's engine is not changed.
        """
        row = await asyncio.to_thread(self.store.get, owner, cid, checkpoint=True)
        if row is None:
            return None
        key = (owner, cid)
        cached = self._cache.get(key)
        if cached is not None and cached.etag == row.etag:
            llm = cached.llm
            self._cache.move_to_end(key)
        else:
            assert row.checkpoint is not None
            llm = await asyncio.to_thread(self.factory.load, row.checkpoint, cid, key)
            # kept for the next search or turn (it was loaded again on each search), unless
            # meanwhile a turn committed a newer one or holds the conversation (it puts its
            # own when it ends)
            if key not in self._cache and key not in self._locks:
                self._put(key, _Cached(llm, row.etag or "", {}, len(row.checkpoint)))
        trace = await asyncio.to_thread(llm.trace, query)
        return trace.to_dict()
