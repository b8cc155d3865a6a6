"""The durable conversation store of `fmai serve`, on SQLAlchemy 2 (SQLite or PostgreSQL).

Four tables:

- `fmai_schema`: one row, the schema version
  ([`SCHEMA_VERSION`][fmai_torch.serve.store.SCHEMA_VERSION]).
- `fmai_conversations`: one row per conversation, keyed by (owner, id): the checkpoint
  document (the JSON `FiniteMemoryLLM.save` writes), the number of turns and messages, and
  an `etag` that changes on every commit.
- `fmai_messages`: the append-only record, one row per message, numbered `seq` 0, 1, 2 ...
  within a conversation; an assistant row carries its turn's `TurnStats`.
- `fmai_turns` (schema 2): one row per turn, keyed by (owner, conversation, turn): the
  turn's [`TurnTrace`][fmai_core.trace.TurnTrace] as JSON (its prompt in parts, what was
  evicted and recalled, the stats; about twice the prompt's text) and a small summary of it
  for listings and plots. Committed in the turn's transaction. A store of schema 1 is
  migrated in place on start (the table is created and the conversations get
  `prompt_tokens` and `archive_tokens` columns, 0 until their next turn); turns from before
  the migration have no trace.

**A turn is one transaction**: the new checkpoint and the turn's messages are committed
together or not at all, and the reply is sent only after the commit. **Two turns of one
conversation never interleave**, across processes too:

- PostgreSQL: the turn holds `pg_advisory_xact_lock` on the conversation from its first read
  to its commit (released at once if the process dies), so a second process waits.
- SQLite (WAL, `synchronous=NORMAL` by default: a committed turn survives the server
  process being killed, not an OS crash or power loss; `sqlite:///PATH?synchronous=full`
  survives both, for one fsync per commit): the turn reads, runs, then commits in a
  `BEGIN IMMEDIATE` transaction that checks the conversation's `etag` is still the one it
  read (compare and swap). A turn that lost the race is refused
  ([`StoreConflict`][fmai_torch.serve.store.StoreConflict], HTTP 409) and changes nothing.
  Different conversations run in parallel in both stores.

An older schema is migrated on start (`MIGRATIONS`); a newer one, or tables that are not
fmai's, are refused with a [`StoreError`][fmai_torch.serve.store.StoreError] that says what
to do.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from fmai_core.errors import FMAIError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Conversation",
    "NewMessage",
    "Store",
    "StoreConflict",
    "StoreError",
    "StoredMessage",
    "TurnRecord",
    "TurnTx",
    "normalize_url",
]

#: The schema version this fmai writes.
SCHEMA_VERSION = 2

_meta = sa.MetaData()
schema_table = sa.Table("fmai_schema", _meta, sa.Column("version", sa.Integer, nullable=False))
conversations = sa.Table(
    "fmai_conversations",
    _meta,
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("etag", sa.String(32), nullable=False),
    sa.Column("checkpoint", sa.Text, nullable=False),
    sa.Column("turns", sa.Integer, nullable=False),
    sa.Column("message_count", sa.Integer, nullable=False),
    sa.Column("title", sa.String(120), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # schema 2: the last turn's prompt tokens and the archive's tokens after it
    sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("archive_tokens", sa.Integer, nullable=False, server_default="0"),
)
messages = sa.Table(
    "fmai_messages",
    _meta,
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("conversation_id", sa.String(200), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("turn", sa.Integer, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("stats", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
turns_table = sa.Table(
    "fmai_turns",
    _meta,
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("conversation_id", sa.String(200), primary_key=True),
    sa.Column("turn", sa.Integer, primary_key=True),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("trace", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


def _migrate_1_to_2(conn: sa.Connection) -> None:
    """Schema 2: the `fmai_turns` table, and token columns on the conversations."""
    for column in ("prompt_tokens", "archive_tokens"):
        conn.execute(
            sa.text(
                f"ALTER TABLE fmai_conversations ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
            )
        )
    turns_table.create(conn)


#: `MIGRATIONS[v]` upgrades a store from version `v` to `v + 1` (run in one transaction).
MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {1: _migrate_1_to_2}


class StoreError(FMAIError):
    """The store cannot be opened or used (unreachable, unknown schema version)."""


class StoreConflict(FMAIError):
    """Another process committed to this conversation while the turn ran (SQLite store)."""


@dataclass(frozen=True)
class StoredMessage:
    """One message of the record."""

    seq: int
    turn: int
    role: str
    content: str
    stats: dict[str, Any] | None
    created_at: float


@dataclass(frozen=True)
class TurnRecord:
    """A turn's trace as the store keeps it: a small `summary` and the whole `trace` (JSON)."""

    turn: int
    summary: dict[str, Any]
    trace: dict[str, Any]


@dataclass(frozen=True)
class NewMessage:
    """A message a turn appends: role, content and, for the reply, the turn's stats."""

    role: str
    content: str
    turn: int
    stats: dict[str, Any] | None = None


@dataclass(frozen=True)
class Conversation:
    """A conversation's row (its checkpoint only when asked for)."""

    id: str
    etag: str
    turns: int
    message_count: int
    title: str
    created_at: float
    updated_at: float
    prompt_tokens: int = 0
    archive_tokens: int = 0
    checkpoint: str | None = None


def normalize_url(url: str) -> str:
    """`postgresql://` (and `postgres://`) go through psycopg 3; anything else is kept."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _lock_key(owner: str, cid: str) -> int:
    """A signed 64-bit advisory-lock key for one conversation."""
    digest = hashlib.sha256(f"{owner}\0{cid}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Store:
    """A conversation store at a SQLAlchemy URL (`sqlite:///PATH` or `postgresql://...`).

    Args:
        url: Where the store lives.
        pool_size: Connections kept open (PostgreSQL: a running turn holds one).

    Raises:
        StoreError: the store cannot be reached, or its schema is newer than this fmai or
            not fmai's.
    """

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = normalize_url(url)
        try:
            parsed = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(
                f"--store {url!r} is not a database URL: use sqlite:///PATH or "
                "postgresql://USER@HOST:PORT/DB."
            ) from exc
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise StoreError(f"--store {url!r}: only sqlite and postgresql stores are supported.")
        # SQLite in WAL mode. `normal` (the default): a commit is in the WAL file when it
        # returns, so it survives the process being killed; the WAL is fsynced at each
        # checkpoint, so an OS crash or power loss can lose the turns since the last one
        # (never half a turn: the store stays consistent). `full` fsyncs every commit and
        # survives both, for ~10 ms a turn on the benchmark's disk (docs/serve.md).
        self.synchronous = str(parsed.query.get("synchronous", "normal")).upper()
        if self.synchronous not in ("FULL", "NORMAL"):
            raise StoreError(f"--store {url!r}: synchronous must be full or normal.")
        parsed = parsed.difference_update_query(["synchronous"])
        self.url = parsed.render_as_string(hide_password=False)
        self.where = parsed.render_as_string(hide_password=True)
        options: dict[str, Any] = {}
        if self.dialect == "postgresql":
            # a pooled connection to a server may have gone (a restart, an idle timeout):
            # each checkout checks it first; a SQLite file cannot go away like that
            options.update(pool_size=pool_size, max_overflow=2 * pool_size, pool_timeout=60)
            options["pool_pre_ping"] = True
        else:
            options.update(pool_size=pool_size, max_overflow=2 * pool_size)
            options["connect_args"] = {"timeout": 30.0}
        self.engine = sa.create_engine(parsed, **options)
        # SQLite has one writer at a time: this process's writers queue here, in order,
        # rather than in SQLite's busy handler (which sleeps up to 100 ms between tries)
        self.write_lock = threading.Lock()
        if self.dialect == "sqlite":
            _sqlite_events(self.engine, self.synchronous)
        try:
            self._setup()
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            advice = (
                "Check that its folder exists and that this user may write there (and to the file)."
                if self.dialect == "sqlite"
                else "Check that the database is running and the URL, user and password are right."
            )
            raise StoreError(f"Cannot open the store {self.where}: {exc.orig}. {advice}") from exc
        except StoreError:
            self.engine.dispose()
            raise

    # -- schema ---------------------------------------------------------------------------
    def _setup(self) -> None:
        with self._locked_ddl() as conn:
            inspector = sa.inspect(conn)
            tables = set(inspector.get_table_names())
            ours = {t.name for t in _meta.sorted_tables}
            if "fmai_schema" not in tables:
                if tables & ours:
                    raise StoreError(
                        f"The store {self.where} has fmai tables but no schema version: it was "
                        "not written by fmai serve, or is damaged. Point --store at another "
                        "database."
                    )
                _meta.create_all(conn)
                conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
                return
            version = conn.execute(sa.select(schema_table.c.version)).scalar()
            if version is None or version < 1:
                raise StoreError(
                    f"The store {self.where} has no valid schema version ({version!r}): point "
                    "--store at another database."
                )
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"The store {self.where} has schema version {version}; this fmai knows "
                    f"versions up to {SCHEMA_VERSION}. Upgrade fmai to serve it (nothing was "
                    "changed)."
                )
            while version < SCHEMA_VERSION:
                step = MIGRATIONS.get(version)
                if step is None:
                    raise StoreError(
                        f"The store {self.where} has schema version {version}, which this fmai "
                        "cannot migrate: export its conversations with an older fmai."
                    )
                step(conn)
                version += 1
                conn.execute(schema_table.update().values(version=version))

    @contextmanager
    def _locked_ddl(self) -> Iterator[sa.Connection]:
        """A transaction that one process at a time holds while it sets up the schema."""
        if self.dialect == "sqlite":
            with self.engine.execution_options(sqlite_begin="IMMEDIATE").begin() as conn:
                yield conn
            return
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(8071997)"))
            yield conn

    @property
    def schema_version(self) -> int:
        """The version recorded in the store."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(schema_table.c.version)).scalar_one())

    # -- turns ----------------------------------------------------------------------------
    def begin_turn(self, owner: str, cid: str) -> TurnTx:
        """Open a turn on conversation `cid` of `owner` (PostgreSQL: waits for its lock)."""
        return TurnTx(self, owner, cid)

    # -- reads ----------------------------------------------------------------------------
    def get(self, owner: str, cid: str, *, checkpoint: bool = False) -> Conversation | None:
        """The conversation's row, or `None`."""
        with self.engine.connect() as conn:
            return _conversation(conn, owner, cid, checkpoint=checkpoint)

    def messages(self, owner: str, cid: str) -> list[StoredMessage]:
        """The conversation's record, in order."""
        with self.engine.connect() as conn:
            return _messages(conn, owner, cid)

    def messages_page(
        self, owner: str, cid: str, *, limit: int = 200, before: int | None = None
    ) -> tuple[list[StoredMessage], bool]:
        """The newest `limit` messages before `seq` `before`, in order; whether older exist."""
        m = messages.c
        query = sa.select(m.seq, m.turn, m.role, m.content, m.stats, m.created_at).where(
            m.owner == owner, m.conversation_id == cid
        )
        if before is not None:
            query = query.where(m.seq < before)
        query = query.order_by(m.seq.desc()).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = [_stored(r) for r in conn.execute(query)]
        return rows[:limit][::-1], len(rows) > limit

    def turns(
        self, owner: str, cid: str, *, limit: int = 100, after: int | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """The turn summaries of a conversation, `limit` after turn `after`; more follow?"""
        rows, more = self.turns_json(owner, cid, limit=limit, after=after)
        return [json.loads(r) for r in rows], more

    def turns_json(
        self, owner: str, cid: str, *, limit: int = 100, after: int | None = None
    ) -> tuple[list[str], bool]:
        """`turns`, each summary as the JSON text stored (served without parsing it)."""
        t = turns_table.c
        query = sa.select(t.summary).where(t.owner == owner, t.conversation_id == cid)
        if after is not None:
            query = query.where(t.turn > after)
        query = query.order_by(t.turn).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = [str(r.summary) for r in conn.execute(query)]
        return rows[:limit], len(rows) > limit

    def turn_trace(self, owner: str, cid: str, turn: int) -> dict[str, Any] | None:
        """The whole trace of one turn, or `None`."""
        t = turns_table.c
        query = sa.select(t.trace).where(t.owner == owner, t.conversation_id == cid, t.turn == turn)
        with self.engine.connect() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else expand_trace(json.loads(found))

    def list(
        self, owner: str, *, limit: int = 20, after: str | None = None
    ) -> tuple[list[Conversation], bool]:
        """`owner`'s conversations by id, `limit` after id `after`; and whether more follow."""
        c = conversations.c
        query = sa.select(*_columns()).where(c.owner == owner)
        if after is not None:
            query = query.where(c.id > after)
        query = query.order_by(c.id).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = [Conversation(**dict(r._mapping)) for r in conn.execute(query)]
        return rows[:limit], len(rows) > limit

    def delete(self, owner: str, cid: str) -> bool:
        """Delete a conversation and its record (under its lock); whether it existed."""
        tx = self.begin_turn(owner, cid)
        try:
            return tx.delete()
        finally:
            tx.close()

    def ping(self) -> None:
        """Raise if the store cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


class TurnTx:
    """One turn's transaction on one conversation: read, then `commit` or `close`.

    PostgreSQL: the conversation stays locked from construction to `commit`/`close`.
    SQLite: reads are immediate; `commit` checks that nobody committed in between.
    """

    def __init__(self, store: Store, owner: str, cid: str) -> None:
        self.store, self.owner, self.id = store, owner, cid
        self._conn: sa.Connection | None = None
        self._done = False
        if store.dialect == "postgresql":
            conn = store.engine.connect()
            self._conn = conn
            try:
                conn.begin()
                lock = sa.text("SELECT pg_advisory_xact_lock(:k)")
                conn.execute(lock, {"k": _lock_key(owner, cid)})
                self.row = _conversation(conn, owner, cid, checkpoint=False)
            except BaseException:
                self.close()
                raise
        else:
            self.row = self._read(lambda conn: _conversation(conn, owner, cid, checkpoint=False))

    def _read(self, fn: Callable[[sa.Connection], Any]) -> Any:
        if self._conn is not None:
            return fn(self._conn)
        with self.store.engine.connect() as conn:
            return fn(conn)

    @property
    def etag(self) -> str | None:
        """The etag read when the turn began (`None`: a new conversation)."""
        return None if self.row is None else self.row.etag

    def checkpoint(self) -> str:
        """The stored checkpoint document (the conversation exists)."""
        key = {"b_owner": self.owner, "b_id": self.id}
        return str(self._read(lambda conn: conn.execute(_SELECT_CHECKPOINT, key).scalar_one()))

    def messages(self) -> list[StoredMessage]:
        """The conversation's record as the turn began."""
        return list(self._read(lambda conn: _messages(conn, self.owner, self.id)))

    def tail(self, limit: int) -> list[StoredMessage]:
        """The newest `limit` messages of the record as the turn began, in order."""
        key = {"b_owner": self.owner, "b_id": self.id, "b_limit": limit}
        rows = self._read(lambda conn: [_stored(r) for r in conn.execute(_SELECT_TAIL, key)])
        return list(rows[::-1])

    def commit(
        self,
        checkpoint: str,
        new: Sequence[NewMessage],
        turns: int,
        title: str,
        *,
        records: Sequence[TurnRecord] = (),
        tokens: tuple[int, int] | None = None,
    ) -> str:
        """Store the checkpoint, append `new` and `records`, in one transaction; new etag.

        `tokens`: the conversation's (prompt tokens, archive tokens) after the turn.

        Raises:
            StoreConflict: (SQLite) another process committed this conversation meanwhile.
        """
        etag = uuid.uuid4().hex
        now = time.time()
        # encoded before the transaction: the SQLite write lock is held for the writes only
        rows = [
            {
                "owner": self.owner,
                "conversation_id": self.id,
                "turn": r.turn,
                "summary": json.dumps(r.summary, ensure_ascii=False, separators=(",", ":")),
                "trace": json.dumps(
                    compact_trace(r.trace), ensure_ascii=False, separators=(",", ":")
                ),
                "created_at": now,
            }
            for r in records
        ]
        if self._conn is not None:
            self._write(self._conn, checkpoint, new, turns, title, etag, now, tokens)
            self._traces(self._conn, rows)
            self._conn.commit()
            self.close()
            return etag
        immediate = self.store.engine.execution_options(sqlite_begin="IMMEDIATE")
        try:
            with self.store.write_lock, immediate.begin() as conn:
                self._write(conn, checkpoint, new, turns, title, etag, now, tokens)
                self._traces(conn, rows)
        finally:
            self._done = True
        return etag

    def _traces(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        """The turn's traces (same transaction as `_write`)."""
        if rows:
            # a trace left from an earlier life of this id (its rows deleted by hand, an
            # older checkpoint put back) describes turns that are now rewritten: replace it
            first = min(r["turn"] for r in rows)
            conn.execute(_DELETE_TRACES, {"b_owner": self.owner, "b_id": self.id, "b_turn": first})
            conn.execute(turns_table.insert(), rows)

    def _write(
        self,
        conn: sa.Connection,
        checkpoint: str,
        new: Sequence[NewMessage],
        turns: int,
        title: str,
        etag: str,
        now: float,
        tokens: tuple[int, int] | None = None,
    ) -> None:
        first = 0 if self.row is None else self.row.message_count
        values: dict[str, Any] = {
            "etag": etag,
            "checkpoint": checkpoint,
            "turns": turns,
            "message_count": first + len(new),
            "updated_at": now,
        }
        if tokens is not None:
            values.update(prompt_tokens=tokens[0], archive_tokens=tokens[1])
        if self.row is None:
            values.update(owner=self.owner, id=self.id, title=title[:120], created_at=now)
            try:
                with conn.begin_nested():
                    conn.execute(conversations.insert(), values)
            except sa.exc.IntegrityError:
                raise _conflict(self.id) from None
        else:
            where = {"b_owner": self.owner, "b_id": self.id, "b_etag": self.row.etag}
            done = conn.execute(_UPDATE_CONVERSATION, {**values, **where})
            if done.rowcount != 1:
                raise _conflict(self.id)
        if new:
            conn.execute(
                messages.insert(),
                [
                    {
                        "owner": self.owner,
                        "conversation_id": self.id,
                        "seq": first + i,
                        "turn": m.turn,
                        "role": m.role,
                        "content": m.content,
                        "stats": None if m.stats is None else json.dumps(m.stats),
                        "created_at": now,
                    }
                    for i, m in enumerate(new)
                ],
            )

    def delete(self) -> bool:
        """Delete the conversation and its record; whether it existed."""

        def run(conn: sa.Connection) -> bool:
            m, c, t = messages.c, conversations.c, turns_table.c
            conn.execute(
                messages.delete().where(m.owner == self.owner, m.conversation_id == self.id)
            )
            conn.execute(
                turns_table.delete().where(t.owner == self.owner, t.conversation_id == self.id)
            )
            gone = conn.execute(
                conversations.delete().where(c.owner == self.owner, c.id == self.id)
            )
            return bool(gone.rowcount)

        if self._conn is not None:
            existed = run(self._conn)
            self._conn.commit()
            return existed
        immediate = self.store.engine.execution_options(sqlite_begin="IMMEDIATE")
        with self.store.write_lock, immediate.begin() as conn:
            return run(conn)

    def close(self) -> None:
        """End the turn without committing (rolls back; PostgreSQL: releases the lock)."""
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.rollback()
            finally:
                conn.close()


def _conflict(cid: str) -> StoreConflict:
    return StoreConflict(
        f"Another request committed to conversation {cid!r} while this turn ran (two server "
        "processes on one SQLite store). Nothing was stored: send the message again, or use a "
        "PostgreSQL store (--store postgresql://...) to share conversations between processes."
    )


def _columns() -> list[sa.Column[Any]]:
    c = conversations.c
    return [
        c.id, c.etag, c.turns, c.message_count, c.title, c.created_at, c.updated_at,
        c.prompt_tokens, c.archive_tokens,
    ]  # fmt: skip


# The statements of a turn, built once: a statement built per call costs SQLAlchemy its
# construction and cache key each time (~0.1 ms each, measured under `fmai serve`).
_c, _t = conversations.c, turns_table.c
_KEY = (_c.owner == sa.bindparam("b_owner"), _c.id == sa.bindparam("b_id"))
_SELECT_ROW = sa.select(*_columns()).where(*_KEY)
_SELECT_ROW_CHECKPOINT = sa.select(*_columns(), _c.checkpoint).where(*_KEY)
_SELECT_CHECKPOINT = sa.select(_c.checkpoint).where(*_KEY)
# the SET clause comes from the parameters' column names
_UPDATE_CONVERSATION = conversations.update().where(*_KEY, _c.etag == sa.bindparam("b_etag"))
_m = messages.c
_SELECT_TAIL = (
    sa.select(_m.seq, _m.turn, _m.role, _m.content, _m.stats, _m.created_at)
    .where(_m.owner == sa.bindparam("b_owner"), _m.conversation_id == sa.bindparam("b_id"))
    .order_by(_m.seq.desc())
    .limit(sa.bindparam("b_limit"))
)
_DELETE_TRACES = turns_table.delete().where(
    _t.owner == sa.bindparam("b_owner"),
    _t.conversation_id == sa.bindparam("b_id"),
    _t.turn >= sa.bindparam("b_turn"),
)


def _conversation(
    conn: sa.Connection, owner: str, cid: str, *, checkpoint: bool
) -> Conversation | None:
    query = _SELECT_ROW_CHECKPOINT if checkpoint else _SELECT_ROW
    row = conn.execute(query, {"b_owner": owner, "b_id": cid}).first()
    return None if row is None else Conversation(**row._asdict())


def _messages(conn: sa.Connection, owner: str, cid: str) -> list[StoredMessage]:
    m = messages.c
    query = (
        sa.select(m.seq, m.turn, m.role, m.content, m.stats, m.created_at)
        .where(m.owner == owner, m.conversation_id == cid)
        .order_by(m.seq)
    )
    return [_stored(r) for r in conn.execute(query)]


def _stored(r: Any) -> StoredMessage:
    stats = None if r.stats is None else json.loads(r.stats)
    return StoredMessage(r.seq, r.turn, r.role, r.content, stats, r.created_at)


def _sqlite_events(engine: sa.Engine, synchronous: str) -> None:
    """WAL, the sync level, and `BEGIN IMMEDIATE` where asked (SQLAlchemy's documented recipe)."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _render(trace: dict[str, Any]) -> list[dict[str, str]]:
    """The prompt a trace's parts render to, with fmai-core's default `ContextBuilder`."""
    from fmai_core.context import ContextBuilder
    from fmai_core.segments import Segment

    summary = trace["summary"]
    messages = ContextBuilder().render(
        trace["system_prompt"],
        [Segment.from_dict(s) for s in trace["pinned"]],
        None if summary is None else Segment.from_dict(summary),
        [Segment.from_dict(s) for s in trace["history"]],
        [Segment.from_dict(s) for s in trace["recalled"]],
        trace["new_message"],
    )
    return [m.to_dict() for m in messages]


def compact_trace(trace: dict[str, Any]) -> dict[str, Any]:
    """`trace` as stored: without its `messages` when its parts render to them exactly.

    A trace holds its prompt twice, as sent (`messages`) and in its parts (the segments'
    texts): some 8 bytes a prompt token. The prompt sent is the default layout of the
    parts, so only the parts are stored, and `expand_trace` renders the messages again on
    reading. A trace whose messages the parts do not render to (a custom `ContextBuilder`)
    is stored whole: nothing is lost either way.
    """
    parts = ("system_prompt", "pinned", "summary", "history", "recalled", "new_message")
    if (
        "messages" in trace
        and all(p in trace for p in parts)
        and _render(trace) == trace["messages"]
    ):
        return {k: v for k, v in trace.items() if k != "messages"}
    return trace


def expand_trace(stored: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `compact_trace`: the trace with its `messages` (in their place)."""
    if "messages" in stored:
        return stored
    turn, rest = stored["turn"], {k: v for k, v in stored.items() if k != "turn"}
    return {"turn": turn, "messages": _render(stored), **rest}
