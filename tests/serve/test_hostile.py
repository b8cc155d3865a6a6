"""A hostile client against a real `fmai serve` on loopback: what it sends must get a clear
4xx (never a 500), change nothing, and hold nothing that other requests wait for.

Each test names the defect it was written for (it failed before the fix).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from test_chat import ask, call, get, request_raw
from test_errors import post


def sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'serve.sqlite3'}"


def request(
    server: Any, method: str, path: str, body: bytes | None = None, headers: Any = None
) -> tuple[int, Any]:
    """(status, JSON body) of any request, the body sent as given."""
    req = urllib.request.Request(
        server.url + path,
        data=body,
        headers={"content-type": "application/json", **(headers or {})},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_a_stalled_stream_reader_holds_no_lock(serve: Any, tmp_path: Path) -> None:
    """Defect: a streaming client that stops reading kept its conversation locked (and, on
    the local model, every conversation: the reply slot; on PostgreSQL, a pooled connection)
    with its turn uncommitted, for as long as it kept the connection open."""
    server = serve(
        sqlite(tmp_path),
        "--max-tokens",
        "200000",
        "--max-new-tokens",
        "50000",
        "--upstream-timeout",
        "120",
    )
    words = " ".join(f"w{i}" for i in range(8_000))  # the fake upstream echoes them back
    body = json.dumps(
        {
            "model": "m",
            "stream": True,
            "max_tokens": 50_000,
            "messages": [{"role": "user", "content": words}],
        }
    ).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", server.port))
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nX-Session-ID: stalled\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    try:
        assert sock.recv(12) == b"HTTP/1.1 200"  # then it reads nothing more
        # the turn commits although the client has read almost none of the reply ...
        deadline = time.monotonic() + 90
        while call(server, "/conversations/stalled")[0] != 200:
            assert time.monotonic() < deadline, "the stalled stream's turn was never committed"
            time.sleep(0.2)
        # ... and the conversation takes its next turn at once
        r, _ = ask(server.client(timeout=20), "next", "stalled")
        assert r.choices[0].message.content == "reply to: next"
        assert get(server, "/conversations/stalled")["turns"] == 2
        # the stalled client still gets its whole reply, then [DONE]
        sock.settimeout(30)
        data = b""
        while b"data: [DONE]" not in data:
            piece = sock.recv(1 << 20)
            assert piece, "the stream ended before [DONE]"
            data += piece
        assert b" w7999" in data and b'"finish_reason": "stop"' in data
    finally:
        sock.close()


def test_nul_characters_get_400_and_change_nothing(serve: Any, store_url: str) -> None:
    """Defect: a message holding U+0000 got a 500 on PostgreSQL (text cannot hold NUL), after
    the upstream was called; streamed, the reply came first and then an error event."""
    server = serve(store_url)
    ask(server.client(), "hello", "nul")
    before = get(server, "/conversations/nul")
    session = {"X-Session-ID": "nul"}
    bodies: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": "hi \x00 there"}]},
        {"stream": True, "messages": [{"role": "user", "content": "hi \x00 there"}]},
        {
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "reply to: hello"},
                {"role": "user", "content": "a\x00"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ]
        },
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x\x00"}]}]},
    ]
    for extra in bodies:
        status, body = post(server, json.dumps({"model": "m", **extra}).encode(), session)
        assert status == 400, (extra, body)
        assert "U+0000" in body["error"]["message"], body
    assert get(server, "/conversations/nul") == before
    # a new conversation is not created either
    status, _ = post(
        server, json.dumps({"model": "m", **bodies[0]}).encode(), {"X-Session-ID": "n2"}
    )
    assert status == 400 and call(server, "/conversations/n2")[0] == 404


def test_malformed_fields_get_400_not_500(serve: Any, tmp_path: Path) -> None:
    """Defect: these requests got 500 (an internal error) or 502 (blaming the upstream)
    instead of a 400 saying what is wrong."""
    server = serve(sqlite(tmp_path))
    ask(server.client(), "hello", "mal")
    before = get(server, "/conversations/mal")
    session = {"X-Session-ID": "mal"}
    msg = '"messages": [{"role": "user", "content": "x"}]'
    chat_bodies = [
        ("stream_options", '{"stream": true, "stream_options": [1], ' + msg + "}"),
        ("stream_options", '{"stream_options": "yes", ' + msg + "}"),
        ("JSON", '{"max_tokens": ' + "9" * 5000 + ", " + msg + "}"),
        ("temperature", '{"temperature": "hot", ' + msg + "}"),
        ("temperature", '{"temperature": NaN, ' + msg + "}"),
        ("top_p", '{"top_p": Infinity, ' + msg + "}"),
        ("seed", '{"seed": "abc", ' + msg + "}"),
        ("stop", '{"stop": {"a": 1}, ' + msg + "}"),
        ("stop", '{"stop": [1, 2], ' + msg + "}"),
    ]
    for name, raw in chat_bodies:
        status, body = request(server, "POST", "/chat/completions", raw.encode(), session)
        assert status == 400, (raw[:80], body)
        assert name in body["error"]["message"] or body["error"]["param"] == name, body
    deep = b"[" * 100_000 + b"]" * 100_000
    for raw in (deep, b'{"query": ' + deep + b"}", b'{"query": ' + b"9" * 5000 + b"}"):
        status, body = request(server, "POST", "/conversations/mal/search", raw)
        assert status == 400, body
    for turn in ("²", "9" * 30, "2147483648", "-1", "1e3"):
        status, body = call(server, "/conversations/mal/turns/" + urllib.request.quote(turn))
        assert status == 400, (turn, body)
        assert body["error"]["param"] == "turn"
    assert get(server, "/conversations/mal") == before


@pytest.mark.parametrize("cid", [".", "..", "..."])
def test_dot_ids_are_refused(serve: Any, tmp_path: Path, cid: str) -> None:
    """Defect: `.` and `..` were accepted as conversation ids, but clients (the SDK's
    httpx, browsers) resolve them out of `/v1/conversations/{id}`: such a conversation could
    not be read or deleted, and the inspector fetched other routes for it."""
    server = serve(sqlite(tmp_path))
    with pytest.raises(openai.BadRequestError) as err:
        ask(server.client(), "hello", cid)
    assert err.value.param == "X-Session-ID"
    assert get(server, "/conversations")["data"] == []
    ask(server.client(), "hello", "a.b..c")  # dots among other characters are fine
    assert get(server, "/conversations/a.b..c")["turns"] == 1


def _raw_exchange(port: int, head: str, body: bytes = b"") -> tuple[int, Any]:
    """Send a raw HTTP request (a thread sends while this one reads); (status, JSON body)."""
    import threading

    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(60)

    def send() -> None:
        with contextlib.suppress(OSError):  # the server may answer before reading it all
            sock.sendall(head.encode() + body)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    finally:
        sender.join(timeout=60)
        sock.close()
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def test_oversized_bodies_get_413(serve: Any, tmp_path: Path) -> None:
    """Defect: a request body of any size was read into memory whole before any check."""
    server = serve(sqlite(tmp_path))
    for path in ("/v1/chat/completions", "/v1/conversations/x/search"):
        # a declared length over the limit is refused before the body is read
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Session-ID: big\r\nContent-Length: {64 << 20}\r\n\r\n"
        )
        status, body = _raw_exchange(server.port, head)
        assert status == 413, body
        assert "32 MiB" in body["error"]["message"]
        # a chunked body (no length) is cut off as it arrives
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "X-Session-ID: big\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * (1 << 20)
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(34)) + b"0\r\n\r\n"
        status, body = _raw_exchange(server.port, head, chunked)
        assert status == 413, body
    assert call(server, "/conversations/big")[0] == 404
    ask(server.client(), "still fine", "big")
    # a body under the limit is read whole (then refused for what it says)
    status, body = post(
        server, b'{"messages": [{"role": "user", "content": "' + b"x" * (1 << 20) + b'"}]}'
    )
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


def test_hang_ups_among_concurrent_turns_leave_one_ordered_record(
    serve: Any, tmp_path: Path
) -> None:
    """Defect: a client hanging up while its turn committed released the conversation's lock
    before the commit was done; the next turn read the record from before it and got 409
    (one process, one SQLite store). Every acknowledged turn is stored once, in order."""
    server = serve(sqlite(tmp_path), "--policy", "hybrid")

    async def go() -> list[tuple[int, str]]:
        client = server.async_client()
        acked: list[tuple[int, str]] = []
        session = {"X-Session-ID": "crowd"}

        async def one(i: int) -> None:
            msgs = [{"role": "user", "content": f"message {i} on topic {i % 7}"}]
            if i % 3 == 0:
                r = await client.chat.completions.create(
                    model="m", messages=msgs, extra_headers=session
                )
                acked.append((r.model_extra["fmai"]["turn_stats"]["turn"], msgs[0]["content"]))
                return
            stream = await client.chat.completions.create(
                model="m", messages=msgs, extra_headers=session, stream=True
            )
            async for c in stream:
                if i % 3 == 2:  # hang up after the first chunk
                    break
                if c.model_extra.get("fmai"):
                    turn = c.model_extra["fmai"]["turn_stats"]["turn"]
                    acked.append((turn, msgs[0]["content"]))
            await stream.close()

        await asyncio.gather(*(one(i) for i in range(36)))
        await client.close()
        return acked

    acked = asyncio.run(go())
    assert len(acked) == 24
    detail = get(server, "/conversations/crowd")
    msgs = detail["messages"]
    assert [m["seq"] for m in msgs] == list(range(len(msgs)))
    assert [m["role"] for m in msgs] == ["user", "assistant"] * detail["turns"]
    users = [(m["turn"], m["content"]) for m in msgs if m["role"] == "user"]
    assert [t for t, _ in users] == list(range(detail["turns"]))
    assert all(users.count(a) == 1 for a in acked)  # each acknowledged turn, once, at its turn
    traces = get(server, "/conversations/crowd/turns?limit=1000")["data"]
    assert [t["turn"] for t in traces] == list(range(detail["turns"]))
    for turn, text in acked:
        assert get(server, f"/conversations/crowd/turns/{turn}")["new_message"] == text


def test_an_unreachable_store_gets_503(serve: Any, postgres: Any) -> None:
    """Defect: when the database went away (or the connection pool stayed exhausted), a turn
    got 500 "Internal server error" instead of 503 saying the store is unavailable."""
    import sqlalchemy as sa

    url = postgres.database("fmai_gone")
    server = serve(url)
    ask(server.client(), "hello", "gone")
    admin = sa.create_engine(postgres.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text('DROP DATABASE "fmai_gone" WITH (FORCE)'))
    admin.dispose()
    with pytest.raises(openai.InternalServerError) as err:
        ask(server.client(), "again", "gone")
    assert err.value.status_code == 503, err.value
    assert err.value.code == "store_unavailable"
    assert "store" in str(err.value) and "Nothing was stored" in str(err.value)
    status, body = call(server, "/conversations/gone")
    assert status == 503 and body["error"]["code"] == "store_unavailable"


def test_an_upstream_reply_with_nul_is_refused_alike_on_both_stores(
    serve: Any, store_url: str, upstream: Any
) -> None:
    """Defect: an upstream reply holding U+0000 got 500 on PostgreSQL (text cannot hold NUL)
    while SQLite stored it (and a client sending that history back then got a 400). Now
    both refuse it with a 502 that says so, and store nothing: the conversation goes on."""
    server = serve(store_url)
    ask(server.client(), "hello", "nulreply")
    before = get(server, "/conversations/nulreply")
    checkpoint = get(server, "/conversations/nulreply/checkpoint")
    default = upstream.reply

    def reply(messages: list[dict[str, str]]) -> str:
        last = messages[-1]["content"]
        return "bad \x00 reply" if "nul please" in last else "reply to: " + last

    upstream.reply = reply
    try:
        for stream in (False, True):
            session = {"X-Session-ID": "nulreply"}
            body = {
                "model": "m",
                "stream": stream,
                "messages": [{"role": "user", "content": "nul please"}],
            }
            data = json.dumps(body).encode()
            status, raw = request_raw(server, "POST", "/chat/completions", data, session)
            if stream and status == 200:  # the failure came after the headers: an error event
                assert b"U+0000" in raw and b"upstream_invalid_reply" in raw, raw
                assert b"[DONE]" not in raw
            else:
                assert status == 502, (status, raw)
                err = json.loads(raw)["error"]
                assert err["code"] == "upstream_invalid_reply" and "U+0000" in err["message"]
        assert get(server, "/conversations/nulreply") == before
        assert get(server, "/conversations/nulreply/checkpoint") == checkpoint
        # the conversation goes on from what is stored
        ask(server.client(), "and now?", "nulreply")
        detail = get(server, "/conversations/nulreply")
        assert [m["content"] for m in detail["messages"]] == [
            "hello", "reply to: hello", "and now?", "reply to: and now?"
        ]  # fmt: skip
    finally:
        upstream.reply = default


def test_the_conversation_detail_is_paged_like_messages(serve: Any, tmp_path: Path) -> None:
    """Defect: GET /v1/conversations/{id} returned every message of the conversation (and
    every turn's stats) in one body, however long it grew. Now it holds one page of the
    record, paged as /messages is (`limit`, `before`; `has_more`, `first_id`)."""
    server = serve(sqlite(tmp_path))
    client = server.client()
    for i in range(6):
        ask(client, f"m{i}", "long")
    detail = get(server, "/conversations/long?limit=4")
    page = get(server, "/conversations/long/messages?limit=4")
    assert detail["messages"] == page["data"] and len(page["data"]) == 4
    assert detail["has_more"] is True and detail["first_id"] == page["first_id"]
    assert detail["turns"] == 6 and len(detail["turn_stats"]) == 2  # the page's replies
    older = get(server, f"/conversations/long?limit=4&before={detail['first_id']}")
    assert (
        older["messages"]
        == get(server, f"/conversations/long/messages?limit=4&before={detail['first_id']}")["data"]
    )
    everything = get(server, "/conversations/long?limit=1000")
    assert everything["has_more"] is False and len(everything["messages"]) == 12
    # the default page is bounded (200 messages), and a limit past 1000 is refused
    assert len(get(server, "/conversations/long")["messages"]) == 12
    for bad in ("limit=0", "limit=1001", "limit=x", "before=-1"):
        status, body = call(server, f"/conversations/long?{bad}")
        assert status == 400, (bad, body)


def test_open_connections_are_bounded(serve: Any, tmp_path: Path) -> None:
    """Defect: uvicorn ran without `limit_concurrency`, so any number of connections (each
    may carry a 32 MiB body) were taken in. Past `--limit-concurrency` a request now gets
    503 at once; once connections close, requests are served again."""
    server = serve(sqlite(tmp_path), "--limit-concurrency", "4")
    idle = []
    try:
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            idle.append(sock)
        time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "/models", timeout=10)
        with err.value:
            assert err.value.code == 503
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert get(server, "/models")["data"]
            break
        except (AssertionError, urllib.error.HTTPError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
