"""More of a hostile (or merely impatient) client against a real `fmai serve` on loopback,
driven through the official openai SDK.

Each test names the defect it was written for (it failed before the fix).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from test_chat import ask, get, request_raw


def sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'serve.sqlite3'}"


def _post_raw(server: Any, body: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return request_raw(server, "POST", "/chat/completions", json.dumps(body).encode(), headers)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_turn_whose_client_timed_out_is_not_stored_so_a_retry_is_not_doubled(
    serve: Any, tmp_path: Path, upstream: Any, stream: bool
) -> None:
    """Defect: a turn whose client hung up before any reply (the openai SDK's own timeout)
    ran on and was committed; the SDK then retried the request (as it does by default), and
    the conversation held the user's message, and its reply, twice. Now a hang-up before
    the commit cancels the turn (the upstream call with it): the retry is the one stored."""
    server = serve(sqlite(tmp_path))
    gate = threading.Event()
    calls: list[str] = []
    default = upstream.reply

    def reply(messages: list[dict[str, str]]) -> str:
        last = messages[-1]["content"]
        calls.append(last)
        if last == "hello once" and calls.count(last) == 1:
            gate.wait(60)  # the first attempt's upstream answers only after its client left
        return "reply to: " + last

    upstream.reply = reply
    session = {"X-Session-ID": f"impatient-{stream}"}
    msgs = [{"role": "user", "content": "hello once"}]

    def attempt(timeout: float) -> str:
        client = openai.OpenAI(base_url=server.url, api_key="k", timeout=timeout, max_retries=0)
        if stream:
            chunks = client.chat.completions.create(
                model="m", messages=msgs, extra_headers=session, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        r = client.chat.completions.create(model="m", messages=msgs, extra_headers=session)
        return str(r.choices[0].message.content)

    try:
        with pytest.raises(openai.APITimeoutError):
            attempt(1.0)  # the upstream holds the reply until this client has given up
        gate.set()
        assert attempt(20.0) == "reply to: hello once"  # the retry (the SDK's, or by hand)
        ask(server.client(), "after", session["X-Session-ID"])
    finally:
        gate.set()
        upstream.reply = default
    detail = get(server, f"/conversations/impatient-{stream}")
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "hello once"), ("assistant", "reply to: hello once"),
        ("user", "after"), ("assistant", "reply to: after"),
    ]  # fmt: skip
    assert detail["turns"] == 2
    with urllib.request.urlopen(server.url.removesuffix("/v1") + "/metrics", timeout=10) as r:
        assert "fmai_serve_active_turns 0.0" in r.read().decode()  # none left counted


def test_a_streamed_reply_with_a_lone_surrogate_is_sent_and_stored_replaced(
    serve: Any, store_url: str, upstream: Any
) -> None:
    """Defect: an upstream reply holding a lone surrogate (JSON can carry `\\ud800`) was
    stored with U+FFFD in its place when not streamed, but streamed it broke the event
    stream off mid-reply with no error event (the piece could not be encoded) and got a
    500 in the server's log. Now both send and store the reply with U+FFFD in its place."""
    server = serve(store_url)
    default = upstream.reply

    def reply(messages: list[dict[str, str]]) -> str:
        last = messages[-1]["content"]
        return "bad \ud800 reply" if last.startswith("surrogate") else "reply to: " + last

    upstream.reply = reply
    try:
        client = server.client()
        session = {"X-Session-ID": "surrogates"}
        for stream in (False, True):
            msgs = [{"role": "user", "content": f"surrogate {stream}"}]
            if stream:
                chunks = client.chat.completions.create(
                    model="m", messages=msgs, extra_headers=session, stream=True
                )
                got = list(chunks)
                assert got[-1].choices[0].finish_reason == "stop"
                text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
            else:
                r = client.chat.completions.create(model="m", messages=msgs, extra_headers=session)
                text = str(r.choices[0].message.content)
            assert text == "bad \ufffd reply"
        ask(client, "and on", "surrogates")
    finally:
        upstream.reply = default
    detail = get(server, "/conversations/surrogates")
    assert [m["content"] for m in detail["messages"]] == [
        "surrogate False", "bad \ufffd reply", "surrogate True", "bad \ufffd reply",
        "and on", "reply to: and on",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        # was a 502 blaming the upstream ("sent a response fmai could not use")
        ({"stop": ["\ud800"]}, "stop", "lone surrogate"),
        ({"stop": "end \udfff"}, "stop", "lone surrogate"),
        # unbounded: every stop string is matched against the reply as it grows
        ({"stop": [f"s{i}" for i in range(17)]}, "stop", "at most 16 strings"),
        ({"stop": "x" * 513}, "stop", "1 to 512 characters"),
        ({"stop": ["ok", ""]}, "stop", "1 to 512 characters"),
        # a string is not a boolean: "false" was taken as true, and streamed
        ({"stream": "false"}, "stream", "true or false"),
        ({"stream": 0}, "stream", "true or false"),
        ({"stream": True, "stream_options": {"include_usage": "no"}}, "stream_options", "true"),
        # the local model's torch.manual_seed raised on it: a 502 "the upstream model failed"
        ({"seed": 10**30}, "seed", "-2**63 to 2**63-1"),
        ({"seed": -(2**63) - 1}, "seed", "-2**63 to 2**63-1"),
    ],
)
def test_malformed_generation_fields_get_400_naming_the_field(
    serve: Any, tmp_path: Path, extra: dict[str, Any], param: str, says: str
) -> None:
    """Defect: a `stop` holding a lone surrogate got a 502 that blamed the upstream, a
    `stream` of "false" streamed, and a `seed` past 64 bits failed the local model (502).
    Each is the client's mistake: 400 naming the field and saying what to send, nothing
    stored."""
    server = serve(sqlite(tmp_path))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    status, raw = _post_raw(server, body, {"X-Session-ID": "fields"})
    assert status == 400, (status, raw)
    err = json.loads(raw)["error"]
    assert err["param"] == param and says in err["message"], err
    assert _post_raw(server, {"model": "m", "messages": [{"role": "user", "content": "ok"}]})[0]
    urls = urllib.request.urlopen(server.url + "/conversations", timeout=10)
    assert json.loads(urls.read())["data"] == []


def test_a_null_max_completion_tokens_leaves_max_tokens_in_force(
    serve: Any, tmp_path: Path
) -> None:
    """Defect: `"max_completion_tokens": null` beside `"max_tokens": 3` (what a client that
    fills every field sends) hid `max_tokens`: the reply ran to the server's budget."""
    server = serve(sqlite(tmp_path))
    words = {"role": "user", "content": "one two three four five six"}
    for limits in ({"max_tokens": 3}, {"max_completion_tokens": None, "max_tokens": 3},
                   {"max_completion_tokens": 3, "max_tokens": None}):  # fmt: skip
        status, raw = _post_raw(server, {"model": "m", "messages": [words], **limits})
        assert status == 200, raw
        body = json.loads(raw)
        assert body["choices"][0]["message"]["content"] == "reply to: one", limits
        assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_a_damaged_stored_checkpoint_gets_an_answer_that_says_what_to_do(
    serve: Any, tmp_path: Path, damage: str
) -> None:
    """Defect: a conversation whose stored checkpoint was damaged (a truncated row, a hand
    edit) answered a turn and a search with the name of a temp file on the server
    (`/tmp/fmai-serve-.../<uuid>.json is not a readable fmai checkpoint`) and "restore a
    backup", and its detail with a bare 500. Now each names the conversation, says nothing
    changed and that DELETE forgets it; the rest of the store is unaffected."""
    import sqlite3

    server = serve(sqlite(tmp_path))
    ask(server.client(), "hello", "damaged")
    ask(server.client(), "hello", "healthy")
    db = sqlite3.connect(tmp_path / "serve.sqlite3")
    (doc,) = db.execute("SELECT checkpoint FROM fmai_conversations WHERE id = 'damaged'").fetchone()
    doc = doc[: len(doc) // 2] if damage == "truncated" else doc.replace("hello", "HELLO")
    db.execute(
        "UPDATE fmai_conversations SET checkpoint = ?, etag = 'by-hand' WHERE id = 'damaged'",
        (doc,),
    )
    db.commit()
    db.close()
    turn = {"model": "m", "messages": [{"role": "user", "content": "again"}]}
    answers = [
        _post_raw(server, turn, {"X-Session-ID": "damaged"}),
        _request(server, "POST", "/conversations/damaged/search", {"query": "hello"}),
    ]
    if damage == "truncated":  # an edited one is still JSON: its detail shows what it holds
        answers.append(_request(server, "GET", "/conversations/damaged"))
    for status, raw in answers:
        assert status == 409, (status, raw)
        err = json.loads(raw)["error"]
        assert err["code"] == "checkpoint_mismatch", err
        message = err["message"]
        assert "'damaged'" in message and "/tmp/" not in message and ".json" not in message
        assert "DELETE /v1/conversations/damaged" in message and "Nothing was changed" in message
    messages = json.loads(_request(server, "GET", "/conversations/damaged/messages")[1])
    assert [m["content"] for m in messages["data"]] == ["hello", "reply to: hello"]
    ask(server.client(), "still fine", "healthy")
    assert _request(server, "DELETE", "/conversations/damaged")[0] == 200
    ask(server.client(), "a new start", "damaged")
    assert [m["content"] for m in get(server, "/conversations/damaged")["messages"]] == [
        "a new start", "reply to: a new start"
    ]  # fmt: skip


def _request(server: Any, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    return request_raw(server, method, path, None if body is None else json.dumps(body).encode())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # was a traceback from the socket (OverflowError), after the store had been opened
        (["--port", "99999"], "--port"),
        # named an internal parameter: "timeout must be a finite number of seconds > 0"
        (["--upstream-timeout", "0"], "--upstream-timeout"),
        (["--upstream-timeout", "nan"], "--upstream-timeout"),
        # advised "check that the database is running ... user and password" for a file
        (["--store", "sqlite:////nonexistent-fmai-folder/s.db"], "folder"),
    ],
)
def test_bad_serve_options_say_which_and_what_to_do(
    tmp_path: Path, args: list[str], says: str
) -> None:
    """Defect: these options of `fmai serve` ended in a traceback or in advice about
    something else. Each now exits with status 2 and a message naming what to fix."""
    import subprocess
    import sys

    cmd = [
        sys.executable, "-m", "fmai_torch.cli", "serve", "--upstream", "http://127.0.0.1:9/v1",
        "--upstream-model", "m", "--store", f"sqlite:///{tmp_path / 's.db'}", *args,
    ]  # fmt: skip
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    if says == "folder":
        assert "password" not in done.stderr


def test_a_client_sending_a_window_of_history_reads_a_window_of_the_record(
    tmp_path: Path,
) -> None:
    """Defect: a client that sends the last few messages with each new one (a window of
    the record) made every turn read the conversation's whole record from the store to
    compare them: a cost that grew with the conversation (measured over HTTP, SQLite: +3.6
    ms a turn at 10 turns, +15 ms at 1,000). Now such a turn reads as many of the newest
    messages as were sent, and the whole record only when they are not its end (a fork)."""
    import asyncio

    import sqlalchemy as sa

    from fmai_core.testing import EchoBackend
    from fmai_torch.serve.protocol import parse_chat_request
    from fmai_torch.serve.sessions import EngineFactory, Sessions, TurnOutcome
    from fmai_torch.serve.store import Store

    store = Store(sqlite(tmp_path))
    factory = EngineFactory(EchoBackend(), policy="sliding", max_tokens=400, max_new_tokens=20)
    sessions = Sessions(store, factory)
    whole_reads: list[str] = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if "FROM fmai_messages" in statement and "LIMIT" not in statement:
            whole_reads.append(statement)

    def turn(messages: list[dict[str, str]], cid: str = "window") -> TurnOutcome:
        req = parse_chat_request(json.dumps({"model": "m", "messages": messages}).encode())

        async def run() -> Any:
            last = None
            async for event in sessions.turn("owner", cid, req):
                last = event
            return last

        outcome = asyncio.run(run())
        assert isinstance(outcome, TurnOutcome)
        return outcome

    history: list[dict[str, str]] = []
    try:
        for i in range(30):
            window = history[-4:]
            message = {"role": "user", "content": f"message {i}"}
            outcome = turn([*window, message])
            history += [message, {"role": "assistant", "content": outcome.text}]
            assert outcome.conversation_id == "window"  # never forked
            if i == 2:  # so far the window held the whole record: reading it all was bounded
                whole_reads.clear()
        assert whole_reads == []
        record = store.messages("owner", "window")
        assert [m.content for m in record] == [m["content"] for m in history]
        # a window that is not the record's end still forks, after reading the record
        forked = turn([{"role": "user", "content": "never said"}, {"role": "user", "content": "x"}])
        assert forked.conversation_id is not None and ".fork-" in forked.conversation_id
        assert whole_reads
    finally:
        store.close()
        factory.close()


def test_a_turn_given_up_while_it_waits_for_the_postgres_lock_leaves_no_lock(
    serve: Any, postgres: Any
) -> None:
    """Defect: a turn whose client hung up while it waited for its conversation's
    PostgreSQL lock (held by another process's turn) left the lock's connection idle in a
    transaction once the wait ended: it held the lock for good, and every later turn of
    that conversation, in every process, waited on it (timed out). The connection that
    comes too late is now rolled back and returned."""
    from fmai_torch.serve.auth import ANONYMOUS
    from fmai_torch.serve.store import Store

    url = postgres.database("fmai_lock_wait")
    server = serve(url)
    ask(server.client(), "first", "locked")
    other = Store(url)  # another server process's turn holds the conversation
    held = other.begin_turn(ANONYMOUS, "locked")
    try:
        impatient = openai.OpenAI(base_url=server.url, api_key="k", timeout=1.0, max_retries=0)
        with pytest.raises(openai.APITimeoutError):
            ask(impatient, "impatient", "locked")
    finally:
        held.close()
        other.close()
    patient = openai.OpenAI(base_url=server.url, api_key="k", timeout=30.0, max_retries=0)
    ask(patient, "next", "locked")
    assert [m["content"] for m in get(server, "/conversations/locked")["messages"]] == [
        "first", "reply to: first", "next", "reply to: next"
    ]  # fmt: skip


def test_a_client_hanging_up_mid_upload_is_not_an_unexpected_error(
    serve: Any, tmp_path: Path
) -> None:
    """Defect: a client that hung up while sending its body (a declared Content-Length it
    never sent) was logged as "fmai serve: unexpected error" with two tracebacks per
    request, and counted as a 500: any client could fill the log. Now it is counted as
    499 (the client closed the request) and logged as nothing unexpected."""
    import socket
    import time

    server = serve(sqlite(tmp_path))
    for path in ("/v1/chat/completions", "/v1/conversations/x/search"):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
            sock.sendall(head.encode() + b'{"messages": [')
    metrics = server.url.removesuffix("/v1") + "/metrics"
    deadline = time.monotonic() + 60
    while True:  # until both hang-ups have been answered (to nobody)
        with urllib.request.urlopen(metrics, timeout=10) as r:
            text = r.read().decode()
        answered = [x for x in text.splitlines() if x.startswith("fmai_serve_requests_total")]
        if sum('status="499"' in x for x in answered) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert 'route="/v1/chat/completions",status="499"' in text, text
    assert 'route="/v1/conversations/{id}/search",status="499"' in text, text
    assert 'status="500"' not in text
    ask(server.client(), "still serving", "upload")
    log = server.log.read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-2000:]


VERBATIM = [
    "a\r\nb\r\n\r\nc", "\r a lone CR \r", "שלום עולם مرحبا \u200f\u202e", "👩‍👩‍👧‍👦 family 🏳️‍🌈",
    "\ufeffBOM\u2028line\u2029para", "tab\tend\x0b\x0c", "  spaced  ", "e\u0301 \U0010ffff \ufffe",
    "\x01\x1f\x7f controls", "long " * 300 + "end.\r\n" * 5,
]  # fmt: skip


def test_odd_text_survives_verbatim_in_the_record_and_the_memory(
    serve: Any, store_url: str, upstream: Any
) -> None:
    """Coverage (no defect found): CRLF and lone CR, RTL marks and overrides, emoji ZWJ
    sequences, BOM and U+2028/9, other controls, combining marks, the last code point and a
    message split into parts come back byte for byte from the record and from the memory
    (the checkpoint, loaded), streamed or not, on both stores; sending the record back as
    history is recognised as the record (no fork)."""
    from fmai_core import FiniteMemoryLLM
    from fmai_core.backends import OpenAIBackend

    server = serve(store_url, "--policy", "hybrid")
    system = "System \r\n with 😀 and \u202e RTL"
    client = server.client()
    for i, text in enumerate(VERBATIM):
        msgs = [{"role": "system", "content": system}] if i == 0 else []
        if i % 2 == 0:
            ask(client, text, "verbatim", msgs)
            continue
        chunks = client.chat.completions.create(
            model="m",
            messages=[*msgs, {"role": "user", "content": text}],
            extra_headers={"X-Session-ID": "verbatim"},
            stream=True,
        )
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    record = get(server, "/conversations/verbatim/messages")["data"]
    assert [m["content"] for m in record if m["role"] == "user"] == VERBATIM
    path = Path(str(server.log) + ".checkpoint.json")
    path.write_text(json.dumps(get(server, "/conversations/verbatim/checkpoint")))
    backend = OpenAIBackend("fake-model", base_url=upstream.openai_url, api_key="sk-test-key")
    llm = FiniteMemoryLLM.load(path, backend)
    assert [m.content for m in llm.messages() if m.role == "user"] == VERBATIM
    assert llm.system_prompt == system
    history = [{"role": m["role"], "content": m["content"]} for m in record]
    _, headers = ask(client, "next", "verbatim", [{"role": "system", "content": system}, *history])
    assert headers["x-session-id"] == "verbatim" and "x-fmai-forked-from" not in headers


def test_a_stopped_server_leaves_no_scratch_folder(tmp_path: Path, upstream: Any) -> None:
    """Defect: each `fmai serve` left a `fmai-serve-*` folder in the temp directory (where
    it puts a stored checkpoint to load it): 889 of them were in /tmp of the machine this
    was found on. A server that stops removes its own."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import UPSTREAM_KEY, free_port

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = free_port()
    cmd = [
        sys.executable, "-m", "fmai_torch.cli", "serve", "--upstream", upstream.openai_url,
        "--upstream-model", "fake-model", "--upstream-key-env", "FMAI_TEST_UPSTREAM_KEY",
        "--store", sqlite(tmp_path), "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(scratch), "FMAI_TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    env.pop("FMAI_API_KEYS", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert [p.name.startswith("fmai-serve-") for p in scratch.iterdir()] == [True]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        ask(client, "hello", "scratch")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode in (0, -signal.SIGTERM), out[-2000:]  # uvicorn re-raises it
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    ("headers", "extra"),
    [({"X-Session-ID": ""}, {}), ({}, {"metadata": {"conversation_id": ""}})],
    ids=["header", "metadata"],
)
def test_an_empty_conversation_id_is_refused_not_taken_as_none(
    serve: Any, tmp_path: Path, headers: dict[str, str], extra: dict[str, Any]
) -> None:
    """Defect: an empty conversation id (a client that failed to fill it in) was taken as
    no id: the turn ran one-off, nothing was stored, and the client was not told, so its
    memory was silently gone. It is now a 400, as any other malformed id. (An empty `user`,
    OpenAI's own field, which clients may send empty, still counts as absent.)"""
    server = serve(sqlite(tmp_path))
    body = {"model": "m", "messages": [{"role": "user", "content": "remember me"}], **extra}
    status, raw = _post_raw(server, body, headers)
    assert status == 400, (status, raw)
    err = json.loads(raw)["error"]
    assert err["param"] == "X-Session-ID" and "1 to 200" in err["message"], err
    one_off = {"model": "m", "messages": body["messages"], "user": ""}
    status, raw = _post_raw(server, one_off, {})
    assert status == 200 and json.loads(raw)["fmai"]["conversation_id"] is None, raw


def test_a_connection_that_sends_no_request_head_is_closed(
    serve: Any, upstream: Any, tmp_path: Path
) -> None:
    """Defect: uvicorn arms no timer before a request's head is complete, so sockets that
    connect and send nothing, or half a request line (slowloris), stayed open for ever, and
    --limit-concurrency of them made every real request a 503. Each now has
    --header-timeout seconds to send its line and headers; a request whose head arrived is
    not cut, however long its turn runs; a kept-alive connection gets the same deadline for
    its next request."""
    import socket
    import time

    server = serve(sqlite(tmp_path), "--header-timeout", "1", "--limit-concurrency", "4")
    silent, partial, kept = (socket.create_connection(("127.0.0.1", server.port)) for _ in "abc")
    partial.sendall(b"POST /v1/chat/completions HT")
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += kept.recv(65536)
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[
            1
        ]
    )
    while len(body) < length:
        body += kept.recv(65536)
    kept.sendall(b"GET /heal")  # the next request's head, never finished
    started = time.monotonic()
    for sock in (silent, partial, kept):
        sock.settimeout(30)
        assert sock.recv(65536) == b""  # closed by the server
        sock.close()
    assert time.monotonic() - started < 25
    # the three held no slot: real requests go through (limit 4), and a turn longer than
    # the timeout is answered, not cut (the upstream stalls past fmai's 5 s upstream limit)
    upstream.fail_next("slow", 1)
    status, raw = _post_raw(server, {"model": "m", "messages": [{"role": "user", "content": "a"}]})
    assert status in (502, 504), (status, raw)
    assert json.loads(raw)["error"]["message"]
    status, _ = _post_raw(server, {"model": "m", "messages": [{"role": "user", "content": "b"}]})
    assert status == 200


def test_a_request_whose_body_trickles_gets_408_and_is_closed(
    serve: Any, upstream: Any, tmp_path: Path
) -> None:
    """Defect: once a request's head had arrived nothing limited its body, so a client that
    declared a body and sent it a byte a minute (a slow-body slowloris) held its connection
    slot for ever, as a silent socket did before --header-timeout. The whole body must now
    arrive within --body-timeout seconds of the head: past them the answer is a 408 (nothing
    changed) and the connection is closed; a body that arrives in time is served."""
    import socket

    server = serve(sqlite(tmp_path), "--body-timeout", "1", "--limit-concurrency", "4")
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(head.encode() + body[:10])  # the rest never comes
    slow.settimeout(30)
    reply = b""
    while True:
        piece = slow.recv(65536)
        if not piece:  # closed by the server after its answer
            break
        reply += piece
    slow.close()
    status_line, rest = reply.split(b"\r\n", 1)
    assert status_line.startswith(b"HTTP/1.1 408"), reply[:300]
    error = json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_timeout" and "--body-timeout" in error["message"]
    assert get(server, "/conversations")["data"] == []  # the 408 stored nothing
    # a body that arrives in time is answered as usual
    status, raw = _post_raw(server, json.loads(body))
    assert status == 200, raw


def test_loaded_engines_are_bounded_by_bytes_and_searches_reuse_them(tmp_path: Path) -> None:
    """Defects: the engines a server keeps loaded between turns were bounded by count only
    (256), whatever their archives weighed, so 256 long conversations could hold gigabytes;
    and a search of a conversation not loaded loaded its checkpoint again on every call (a
    cost that grows with the archive, for each request). Now the cache is bounded by its
    checkpoints' bytes too (`--engine-cache-mb`), least recent out, and a search's engine is
    kept for the next search or turn."""
    import asyncio

    from fmai_core.testing import EchoBackend
    from fmai_torch.serve.protocol import parse_chat_request
    from fmai_torch.serve.sessions import EngineFactory, Sessions
    from fmai_torch.serve.store import Store

    loads: list[str] = []

    class Counting(EngineFactory):
        def load(self, document: str, cid: str = "?", key: Any = None) -> Any:
            loads.append(cid)
            return super().load(document, cid, key)

    store = Store(sqlite(tmp_path))
    factory = Counting(EchoBackend(), policy="sliding", max_tokens=400, max_new_tokens=20)
    sessions = Sessions(store, factory)

    def turn(cid: str, text: str) -> None:
        req = parse_chat_request(
            json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
        )

        async def run() -> None:
            async for _ in sessions.turn("owner", cid, req):
                pass

        asyncio.run(run())

    try:
        words = " ".join(f"word{i}" for i in range(60))
        turn("a", words)
        row = store.get("owner", "a", checkpoint=True)
        assert row is not None and row.checkpoint is not None
        sessions.cache_bytes = int(2.5 * len(row.checkpoint))  # two of these fit, not three
        turn("b", words)
        turn("c", words)
        assert loads == []  # b and c are cached; a went out when c came in
        turn("c", words)
        turn("b", words)
        assert loads == []
        turn("a", words)
        assert loads == ["a"]  # loaded again
        # a search of a conversation that is not loaded (c went out for a) loads it once
        for _ in range(3):
            found = asyncio.run(sessions.search("owner", "c", "word7"))
            assert found is not None
        assert loads == ["a", "c"]
        turn("c", words)  # the engine the search loaded serves the turn
        assert loads == ["a", "c"]
        sessions.cache_bytes = len(row.checkpoint) // 2  # none fits now: none is kept
        turn("b", words)
        turn("b", words)
        assert loads[-2:] == ["b", "b"]
    finally:
        store.close()
        factory.close()
