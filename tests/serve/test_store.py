"""The durable store: restarts, schema versions, locks across processes, no torch needed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_chat import ask, get

from fmai_torch.serve.store import SCHEMA_VERSION, NewMessage, Store, StoreConflict, StoreError


def test_restart_keeps_every_conversation(serve: Any, store_url: str, upstream: Any) -> None:
    server = serve(store_url)
    client = server.client()
    for i in range(4):
        ask(client, f"Fact {i}: my number is {i * 11}.", f"keep-{i}")
    before = {i: get(server, f"/conversations/keep-{i}/checkpoint") for i in range(4)}
    server.restart()
    for i in range(4):
        assert get(server, f"/conversations/keep-{i}/checkpoint") == before[i]
    ask(server.client(), "What is my number?", "keep-2")
    assert [m["content"] for m in upstream.requests[-1]["messages"]] == [
        "Fact 2: my number is 22.",
        "reply to: Fact 2: my number is 22.",
        "What is my number?",
    ]
    server.stop(kill=True)  # SIGKILL: what was acknowledged is there
    server.start()
    assert get(server, "/conversations/keep-2")["turns"] == 2
    assert len(get(server, "/conversations?limit=3")["data"]) == 3
    page = get(server, "/conversations?limit=3")
    assert page["has_more"] and page["last_id"] == "keep-2"
    rest = get(server, f"/conversations?limit=3&after={page['last_id']}")
    assert [c["id"] for c in rest["data"]] == ["keep-3"] and not rest["has_more"]


def test_two_processes_on_postgres_match_one(serve: Any, postgres: Any) -> None:
    shared = postgres.database("fmai_two_procs")
    single = postgres.database("fmai_one_proc")
    a, b = serve(shared), serve(shared)
    one = serve(single)
    texts = [
        f"Turn {i}: I like {w}."
        for i, w in enumerate(["tea", "rome", "cats", "trains", "jazz", "snow", "figs", "maps"])
    ]
    for i, text in enumerate(texts):
        ask((a if i % 2 else b).client(), text, "alt")
        ask(one.client(), text, "alt")
    two_msgs = get(a, "/conversations/alt")["messages"]
    one_msgs = get(one, "/conversations/alt")["messages"]
    assert [(m["role"], m["content"]) for m in two_msgs] == [
        (m["role"], m["content"]) for m in one_msgs
    ]
    state_two = get(b, "/conversations/alt/checkpoint")["state"]
    state_one = get(one, "/conversations/alt/checkpoint")["state"]
    assert state_two == state_one


def test_sqlite_commit_checks_nobody_committed_meanwhile(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    first, second = store.begin_turn("o", "c"), store.begin_turn("o", "c")
    first.commit("{}", [NewMessage("user", "a", 0), NewMessage("assistant", "b", 0)], 1, "a")
    with pytest.raises(StoreConflict, match="Nothing was stored"):
        second.commit("{}", [NewMessage("user", "x", 0)], 1, "x")
    third = store.begin_turn("o", "c")
    fourth = store.begin_turn("o", "c")
    third.commit("{}", [NewMessage("user", "c", 1)], 2, "")
    with pytest.raises(StoreConflict):
        fourth.commit("{}", [NewMessage("user", "y", 1)], 2, "")
    assert [m.content for m in store.messages("o", "c")] == ["a", "b", "c"]
    assert store.get("o", "c").turns == 2  # type: ignore[union-attr]
    store.close()


def test_postgres_lock_serializes_one_conversation_not_others(postgres: Any) -> None:
    store = Store(postgres.database("fmai_locks"))
    held = store.begin_turn("o", "c")
    order: list[str] = []

    def second() -> None:
        tx = store.begin_turn("o", "c")  # waits for `held`
        order.append(f"second saw {tx.row.turns if tx.row else 0} turns")
        tx.commit("{}", [NewMessage("user", "2", 1)], 2, "")

    thread = threading.Thread(target=second)
    thread.start()
    other = store.begin_turn("o", "other")  # another conversation does not wait
    other.close()
    time.sleep(0.3)
    order.append("first commits")
    held.commit("{}", [NewMessage("user", "1", 0)], 1, "")
    thread.join(10)
    assert order == ["first commits", "second saw 1 turns"]
    assert [m.content for m in store.messages("o", "c")] == ["1", "2"]
    store.close()


def test_schema_version_is_checked(store_url: str) -> None:
    store = Store(store_url)
    assert store.schema_version == SCHEMA_VERSION
    url = store.url
    store.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE fmai_schema SET version = 99"))
    known = f"schema version 99; this fmai knows versions up to {SCHEMA_VERSION}"
    with pytest.raises(StoreError, match=known):
        Store(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE fmai_schema"))
    with pytest.raises(StoreError, match="no schema version"):
        Store(store_url)
    engine.dispose()


def test_bad_store_urls_are_clear(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        Store("not a url")
    with pytest.raises(StoreError, match="only sqlite and postgresql"):
        Store("mysql://localhost/x")
    with pytest.raises(StoreError, match="synchronous must be full or normal"):
        Store(f"sqlite:///{tmp_path / 'a.db'}?synchronous=off")
    for query, level in (("", 1), ("?synchronous=normal", 1), ("?synchronous=full", 2)):
        store = Store(f"sqlite:///{tmp_path / 'b.db'}{query}")
        with store.engine.connect() as conn:  # 1: NORMAL (the default), 2: FULL
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level, query
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        store.close()
    with pytest.raises(StoreError, match="Cannot open the store"):
        Store("postgresql://nobody@127.0.0.1:9/none")


def test_upstream_server_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from fmai_torch.serve.server import ServeOptions, build_app\n"
        f"app = build_app(ServeOptions(upstream='http://127.0.0.1:9/v1', upstream_model='m', "
        f"store='sqlite:///{tmp_path / 's.db'}'))\n"
        "bad = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
