"""Per-turn traces through the API: the prompt in its parts, evictions, recall, search."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import sqlalchemy as sa
from test_chat import ask, call, get

from fmai_torch.serve.store import SCHEMA_VERSION, NewMessage, Store, TurnRecord

FILLER = [
    "The garden needs compost and the tomatoes need water today.",
    "The forecast says rain and a storm on the weekend, so no hike.",
    "I tried a pasta recipe with garlic, lemon and fresh basil.",
    "My laptop battery dies fast after the last system update.",
    "The train to the museum was late again this morning.",
]
KEY = "sk-inspector-5e1f"


def post(server: Any, path: str, body: Any, key: str = KEY) -> tuple[int, Any]:
    req = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_turn_traces_show_the_exact_prompt_evictions_and_recall(
    serve: Any, store_url: str, upstream: Any
) -> None:
    server = serve(store_url, "--policy", "semantic", "--api-key", KEY, "--api-key", "sk-other")
    client = server.client(KEY)
    ask(client, "My sister is called Ada and she lives in Lisbon.", "tr")
    sent = []
    for i in range(11):
        ask(client, FILLER[i % len(FILLER)], "tr", stream=i % 2 == 1)
        sent.append([m["content"] for m in upstream.requests[-1]["messages"]])
    r, _ = ask(client, "Where does my sister Ada live?", "tr")
    sent.append([m["content"] for m in upstream.requests[-1]["messages"]])

    page = get(server, "/conversations/tr/turns?limit=5", KEY)
    assert [t["turn"] for t in page["data"]] == [0, 1, 2, 3, 4] and page["has_more"]
    rest = get(server, f"/conversations/tr/turns?limit=100&after={page['last_id']}", KEY)
    turns = page["data"] + rest["data"]
    assert [t["turn"] for t in turns] == list(range(13)) and not rest["has_more"]
    assert any(t["evicted_segments"] for t in turns), "the 400-token budget forces evictions"
    for t in turns:
        assert sum(t["part_tokens"].values()) + t["overhead_tokens"] == t["prompt_tokens"]
        assert t["stats"]["evicted_tokens"] == t["evicted_tokens"]
        assert {"ttft_ms", "latency_ms", "reused_tokens", "prefill_tokens"} <= set(t["stats"])

    for n in range(1, 13):  # the exact prompt the upstream received, turn by turn
        trace = get(server, f"/conversations/tr/turns/{n}", KEY)
        assert [m["content"] for m in trace["messages"]] == sent[n - 1]
        assert trace["turn"] == n and trace["stats"]["turn"] == n
    last = get(server, "/conversations/tr/turns/12", KEY)
    assert any("Lisbon" in s["text"] for s in last["recalled"])
    assert all(isinstance(s["score"], float) and s["score"] > 0 for s in last["recalled"])
    assert last["part_tokens"]["recalled"] == sum(s["tokens"] for s in last["recalled"])
    # prompt_tokens: the planner's count the parts add up to; the stats: the upstream's report
    assert r.usage.prompt_tokens == last["stats"]["prompt_tokens"]
    assert abs(last["prompt_tokens"] - last["stats"]["prompt_tokens"]) <= 2
    listed = get(server, "/conversations", KEY)["data"][0]
    assert listed["prompt_tokens"] == r.usage.prompt_tokens and listed["archive_tokens"] > 0
    assert listed["archive_tokens"] == last["archive_tokens"]

    assert get(server, "/conversations/tr/turns/latest", KEY) == {**last}
    detail = get(server, "/conversations/tr", KEY)
    assert detail["prompt"]["recalled"] == last["recalled"]
    assert detail["prompt"]["recalled_tokens"] == last["part_tokens"]["recalled"]
    # the record, newest page first, then the page before it
    newest = get(server, "/conversations/tr/messages?limit=10", KEY)
    assert [m["seq"] for m in newest["data"]] == list(range(16, 26)) and newest["has_more"]
    assert newest["data"][-1]["content"] == r.choices[0].message.content
    older = get(server, f"/conversations/tr/messages?limit=100&before={newest['first_id']}", KEY)
    assert [m["seq"] for m in older["data"]] == list(range(16)) and not older["has_more"]
    assert call(server, "/conversations/tr/messages?before=x", KEY)[0] == 400
    assert call(server, "/conversations/tr/messages", "sk-other")[0] == 404

    # the archive search: what would be recalled, with scores, and nothing changes
    before = get(server, "/conversations/tr/checkpoint", KEY)
    status, found = post(server, "/conversations/tr/search", {"query": "Lisbon sister"})
    assert status == 200, found
    assert found["stats"] is None
    assert any("Lisbon" in s["text"] and s["score"] > 0 for s in found["recalled"])
    assert get(server, "/conversations/tr/checkpoint", KEY) == before
    assert len(get(server, "/conversations/tr/turns?limit=100", KEY)["data"]) == 13

    # errors: another key's conversation is not there; bad parameters are 400
    assert call(server, "/conversations/tr/turns", "sk-other")[0] == 404
    assert call(server, "/conversations/tr/turns/3", "sk-other")[0] == 404
    assert post(server, "/conversations/tr/search", {"query": "x"}, "sk-other")[0] == 404
    assert post(server, "/conversations/tr/search", {"query": "x"}, "wrong")[0] == 401
    assert call(server, "/conversations/tr/turns", "wrong")[0] == 401
    assert call(server, "/conversations/tr/turns/99", KEY)[0] == 404
    assert call(server, "/conversations/tr/turns/x", KEY)[0] == 400
    assert call(server, "/conversations/tr/turns?limit=0", KEY)[0] == 400
    assert post(server, "/conversations/tr/search", {"query": " "})[0] == 400
    # deleting the conversation deletes its traces
    assert call(server, "/conversations/tr", KEY, "DELETE")[0] == 200
    assert call(server, "/conversations/tr/turns/3", KEY)[0] == 404


V1 = [
    "CREATE TABLE fmai_schema (version INTEGER NOT NULL)",
    "CREATE TABLE fmai_conversations (owner VARCHAR(64) NOT NULL, id VARCHAR(200) NOT NULL, "
    "etag VARCHAR(32) NOT NULL, checkpoint TEXT NOT NULL, turns INTEGER NOT NULL, "
    "message_count INTEGER NOT NULL, title VARCHAR(120) NOT NULL, created_at FLOAT NOT NULL, "
    "updated_at FLOAT NOT NULL, PRIMARY KEY (owner, id))",
    "CREATE TABLE fmai_messages (owner VARCHAR(64) NOT NULL, conversation_id VARCHAR(200) "
    "NOT NULL, seq INTEGER NOT NULL, turn INTEGER NOT NULL, role VARCHAR(16) NOT NULL, "
    "content TEXT NOT NULL, stats TEXT, created_at FLOAT NOT NULL, "
    "PRIMARY KEY (owner, conversation_id, seq))",
    "INSERT INTO fmai_schema (version) VALUES (1)",
    "INSERT INTO fmai_conversations VALUES ('o', 'old', 'e1', '{}', 1, 2, 'hi', 1.0, 2.0)",
    "INSERT INTO fmai_messages VALUES ('o', 'old', 0, 0, 'user', 'hi', NULL, 1.0)",
    "INSERT INTO fmai_messages VALUES ('o', 'old', 1, 0, 'assistant', 'hello', '{}', 1.0)",
]


def test_a_schema_1_store_is_migrated_in_place(store_url: str) -> None:
    fresh = Store(store_url)
    url = fresh.url
    fresh.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the store as the first fmai serve wrote it
        for table in ("fmai_turns", "fmai_messages", "fmai_conversations", "fmai_schema"):
            conn.execute(sa.text(f"DROP TABLE {table}"))
        for statement in V1:
            conn.execute(sa.text(statement))
    engine.dispose()
    store = Store(store_url)
    assert store.schema_version == SCHEMA_VERSION == 2
    old = store.get("o", "old")
    assert old is not None and (old.turns, old.prompt_tokens, old.archive_tokens) == (1, 0, 0)
    assert [m.content for m in store.messages("o", "old")] == ["hi", "hello"]
    assert store.turns("o", "old") == ([], False)  # turns from before have no trace
    tx = store.begin_turn("o", "old")
    record = TurnRecord(1, {"turn": 1}, {"turn": 1, "messages": []})
    new = [NewMessage("user", "again", 1), NewMessage("assistant", "yes", 1)]
    tx.commit("{}", new, 2, "hi", records=[record], tokens=(30, 7))
    assert store.turns("o", "old") == ([{"turn": 1}], False)
    assert store.turn_trace("o", "old", 1) == {"turn": 1, "messages": []}
    got = store.get("o", "old")
    assert got is not None and (got.prompt_tokens, got.archive_tokens) == (30, 7)
    store.close()
    again = Store(store_url)  # opening again changes nothing
    assert again.schema_version == 2 and again.turns("o", "old")[0] == [{"turn": 1}]
    again.close()


def test_a_stale_trace_of_a_rewritten_turn_is_replaced(store_url: str) -> None:
    store = Store(store_url)
    for life in ("first", "second"):  # the id's rows deleted by hand, its traces left
        tx = store.begin_turn("o", "c")
        records = [TurnRecord(0, {"turn": 0, "life": life}, {"turn": 0, "life": life})]
        tx.commit("{}", [NewMessage("user", life, 0)], 1, life, records=records, tokens=(5, 0))
        with store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM fmai_messages"))
            conn.execute(sa.text("DELETE FROM fmai_conversations"))
    assert store.turns("o", "c") == ([{"turn": 0, "life": "second"}], False)
    store.close()


def test_a_stored_trace_holds_its_prompt_once(serve: Any, tmp_path: Any, upstream: Any) -> None:
    """Defect: each turn's stored trace held its prompt twice, as sent (`messages`) and in
    its parts (some 16 KB a turn at --max-tokens 2048). Now the parts alone are stored and
    the prompt sent is rendered from them on reading, exactly as the upstream received it."""
    db = tmp_path / "serve.sqlite3"
    server = serve(f"sqlite:///{db}", "--policy", "semantic")
    client = server.client()
    ask(client, "My sister is called Ada and she lives in Lisbon.", "once")
    sent = []
    for i in range(11):
        ask(client, FILLER[i % len(FILLER)], "once")
        sent.append(upstream.requests[-1]["messages"])
    ask(client, "Where does my sister Ada live?", "once")
    sent.append(upstream.requests[-1]["messages"])
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        stored = [r[0] for r in conn.execute(sa.text("SELECT trace FROM fmai_turns ORDER BY turn"))]
    engine.dispose()
    assert len(stored) == 13
    recalled = 0
    for n, raw in enumerate(stored):
        doc = json.loads(raw)
        assert "messages" not in doc  # the parts only
        trace = get(server, f"/conversations/once/turns/{n}")
        assert list(trace)[1:3] == ["turn", "messages"]  # in their place
        if n:
            assert [(m["role"], m["content"]) for m in trace["messages"]] == [
                (m["role"], m["content"]) for m in sent[n - 1]
            ]
        # the prompt appears once in what is stored: its size is about the parts' size
        prompt = sum(len(m["content"]) for m in trace["messages"])
        assert len(raw) < len(json.dumps(trace)) - prompt * 0.9
        recalled += len(trace["recalled"])
    assert recalled, "the test covers a recalled block"


def test_a_trace_the_default_layout_does_not_render_is_stored_whole() -> None:
    from fmai_torch.serve.store import compact_trace, expand_trace

    parts = {"system_prompt": None, "pinned": [], "summary": None, "history": [],
             "recalled": [], "new_message": "hi"}  # fmt: skip
    same = {"turn": 0, "messages": [{"role": "user", "content": "hi"}], **parts}
    assert "messages" not in compact_trace(same) and expand_trace(compact_trace(same)) == same
    custom = {"turn": 0, "messages": [{"role": "user", "content": "Q: hi"}], **parts}
    assert compact_trace(custom) == custom and expand_trace(custom) == custom
