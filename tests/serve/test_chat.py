"""`fmai serve` through the official openai SDK: chat, stream, async, memory, history modes."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any


def ask(
    client: Any, text: str, cid: str | None = None, history: list[Any] | None = None, **kw: Any
) -> tuple[Any, Any]:
    """One non-streaming turn; return (completion, response headers)."""
    headers = {"X-Session-ID": cid} if cid else {}
    msgs = [*(history or []), {"role": "user", "content": text}]
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=msgs, extra_headers=headers, **kw
    )
    return raw.parse(), raw.headers


def get(server: Any, path: str, key: str = "unused") -> Any:
    status, body = call(server, path, key)
    assert status == 200, (status, body)
    return body


def call(server: Any, path: str, key: str = "unused", method: str = "GET") -> tuple[int, Any]:
    """(status, JSON body) of a request to the API."""
    headers = {"Authorization": f"Bearer {key}"}
    req = urllib.request.Request(server.url + path, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def request_raw(
    server: Any,
    method: str,
    path: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """(status, body bytes) of a request to the API, JSON content type, errors included."""
    req = urllib.request.Request(
        server.url + path,
        data=data,
        headers={"content-type": "application/json", **(headers or {})},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def sent_to_upstream(upstream: Any) -> list[str]:
    return [m["content"] for m in upstream.requests[-1]["messages"]]


def test_chat_keeps_memory_sending_only_the_new_message(
    serve: Any, store_url: str, upstream: Any
) -> None:
    server = serve(store_url)
    client = server.client()
    r, headers = ask(client, "My sister is called Ada.", "memo")
    assert r.choices[0].message.content == "reply to: My sister is called Ada."
    assert headers["x-session-id"] == "memo"
    stats = json.loads(headers["x-fmai-turn-stats"])
    assert stats["turn"] == 0 and stats["prompt_tokens"] == r.usage.prompt_tokens
    assert r.usage.prompt_tokens_details.cached_tokens == (stats["reused_tokens"] or 0)
    assert r.model_extra["fmai"]["conversation_id"] == "memo"
    ask(client, "What is my sister called?", "memo")
    assert sent_to_upstream(upstream) == [
        "My sister is called Ada.",
        "reply to: My sister is called Ada.",
        "What is my sister called?",
    ]
    detail = get(server, "/conversations/memo")
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"] * 2
    assert detail["turns"] == 2 and len(detail["turn_stats"]) == 2
    assert next(s["text"] for s in detail["prompt"]["history"]) == "My sister is called Ada."
    assert detail["archived"] == []
    listing = get(server, "/conversations")
    assert [c["id"] for c in listing["data"]] == ["memo"] and not listing["has_more"]


def test_stream_and_async(serve: Any, store_url: str, upstream: Any) -> None:
    server = serve(store_url)
    client = server.client()
    stream = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "Hello there, I live in Rome."}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Session-ID": "streamed"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "reply to: Hello there, I live in Rome."
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish[0].choices[0].finish_reason == "stop"
    assert finish[0].model_extra["fmai"]["turn_stats"]["turn"] == 0
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    async def go() -> list[str]:
        aclient = server.async_client()
        r = await aclient.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "Where do I live?"}],
            extra_headers={"X-Session-ID": "streamed"},
        )
        parts = []
        s = await aclient.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "And again?"}],
            stream=True,
            extra_headers={"X-Session-ID": "streamed"},
        )
        async for c in s:
            if c.choices and c.choices[0].delta.content:
                parts.append(c.choices[0].delta.content)
        await aclient.close()
        return [r.choices[0].message.content, "".join(parts)]

    assert asyncio.run(go()) == ["reply to: Where do I live?", "reply to: And again?"]
    assert get(server, "/conversations/streamed")["turns"] == 3
    assert "Hello there, I live in Rome." in sent_to_upstream(upstream)


def test_concurrent_turns_of_one_conversation_take_turns(serve: Any, store_url: str) -> None:
    server = serve(store_url)

    async def go() -> None:
        aclient = server.async_client()
        await asyncio.gather(
            *(
                aclient.chat.completions.create(
                    model="fake-model",
                    messages=[{"role": "user", "content": f"message {i}"}],
                    extra_headers={"X-Session-ID": "busy" if i % 2 else "other"},
                )
                for i in range(12)
            )
        )
        await aclient.close()

    asyncio.run(go())
    for cid in ("busy", "other"):
        msgs = get(server, f"/conversations/{cid}")["messages"]
        assert len(msgs) == 12 and [m["seq"] for m in msgs] == list(range(12))
        users = [m["content"] for m in msgs[::2]]
        replies = [m["content"] for m in msgs[1::2]]
        assert replies == [f"reply to: {u}" for u in users]  # each reply follows its message
        assert [m["turn"] for m in msgs[::2]] == list(range(6))


def test_whole_history_appends_only_what_is_new_and_forks_a_contradiction(
    serve: Any, store_url: str, upstream: Any
) -> None:
    server = serve(store_url)
    client = server.client()
    history: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
    for text in ("I have a cat.", "Her name is Tess."):
        r, headers = ask(client, text, "whole", history)
        assert headers["x-session-id"] == "whole"
        history += [
            {"role": "user", "content": text},
            {"role": "assistant", "content": r.choices[0].message.content},
        ]
    detail = get(server, "/conversations/whole")
    assert [m["content"] for m in detail["messages"]] == [m["content"] for m in history[1:]]
    assert detail["prompt"]["system_prompt"] == "Be brief."
    # a client that holds the history while the server already has part of it: the extra
    # messages it sends (never seen by the server) are appended once
    extra = [
        {"role": "user", "content": "I also have a dog."},
        {"role": "assistant", "content": "Noted."},
    ]
    ask(client, "How many pets?", "whole", history + extra)
    contents = [m["content"] for m in get(server, "/conversations/whole")["messages"]]
    assert contents[-4:] == [
        "I also have a dog.",
        "Noted.",
        "How many pets?",
        "reply to: How many pets?",
    ]
    assert len(contents) == 8
    # a history that contradicts the record: forked into a new conversation
    edited = [history[0], {"role": "user", "content": "I have a parrot."}]
    r, headers = ask(client, "What pet do I have?", "whole", edited)
    fork = headers["x-session-id"]
    assert fork != "whole" and fork.startswith("whole.fork-")
    assert headers["x-fmai-forked-from"] == "whole"
    assert sent_to_upstream(upstream) == ["Be brief.", "I have a parrot.", "What pet do I have?"]
    assert len(get(server, "/conversations/whole")["messages"]) == 8  # unchanged
    forked = get(server, f"/conversations/{fork}")
    assert [m["content"] for m in forked["messages"]][:2] == [
        "I have a parrot.",
        "What pet do I have?",
    ]
    # a different system prompt contradicts too
    _, headers = ask(client, "Hi", "whole", [{"role": "system", "content": "Be verbose."}])
    assert headers["x-session-id"].startswith("whole.fork-")


def test_ids_from_metadata_and_user_and_one_off(serve: Any, store_url: str, upstream: Any) -> None:
    server = serve(store_url)
    client = server.client()
    ask(client, "via metadata", metadata={"conversation_id": "meta-1"})
    ask(client, "via user", user="user-7")
    r, headers = ask(client, "one off")
    assert "x-session-id" not in headers and r.model_extra["fmai"]["conversation_id"] is None
    ids = [c["id"] for c in get(server, "/conversations")["data"]]
    assert ids == ["meta-1", "user-7"]
    ask(client, "again", metadata={"conversation_id": "meta-1"})
    assert sent_to_upstream(upstream)[0] == "via metadata"
    # one-off with history: the memory policy applies, nothing is stored
    ask(
        client,
        "q",
        history=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    )
    assert sent_to_upstream(upstream) == ["a", "b", "q"]
    assert len(get(server, "/conversations")["data"]) == 2


def test_models_checkpoint_delete_metrics(serve: Any, store_url: str) -> None:
    server = serve(store_url)
    client = server.client()
    assert [m.id for m in client.models.list()] == ["fake-model"]
    ask(client, "Remember 42.", "ck")
    doc = get(server, "/conversations/ck/checkpoint")
    assert doc["format"] == "fmai-checkpoint" and doc["checksum"].startswith("sha256:")
    assert next(s["text"] for s in doc["state"]["history"]) == "Remember 42."
    with urllib.request.urlopen(server.url.removesuffix("/v1") + "/metrics") as r:
        text = r.read().decode()
    assert "fmai_turns_total 1.0" in text and "fmai_serve_requests_total" in text
    status, body = call(server, "/conversations/ck", method="DELETE")
    assert status == 200 and body["deleted"] is True
    status, body = call(server, "/conversations/ck")
    assert status == 404 and body["error"]["code"] == "conversation_not_found"
    assert call(server, "/conversations/ck", method="DELETE")[0] == 404
