"""API keys: 401 without a valid key, 404 for another key's conversations, no key stored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from test_chat import ask, call, get

from fmai_torch.serve.auth import ANONYMOUS, Keys, keys_from_env

ALICE, BOB = "sk-alice-7f3a9c1e55", "sk-bob-0d8e2b4a77"


def test_keys_isolate_conversations(serve: Any, store_url: str, tmp_path: Path) -> None:
    server = serve(store_url, "--api-key", ALICE, "--api-key", BOB)
    for key in ("unused", "", ALICE + "x"):
        with pytest.raises(openai.AuthenticationError) as err:
            ask(server.client(key or "-"), "hello", "secret")
        assert err.value.code == "invalid_api_key"
    alice, bob = server.client(ALICE), server.client(BOB)
    ask(alice, "My PIN is 4321.", "secret")
    for path in ("/conversations/secret", "/conversations/secret/checkpoint"):
        assert call(server, path, BOB)[0] == 404
        assert call(server, path, BOB, "DELETE")[0] in (404, 405)
    assert get(server, "/conversations", BOB)["data"] == []
    assert [c["id"] for c in get(server, "/conversations", ALICE)["data"]] == ["secret"]
    # the same id under another key is another conversation: Bob never sees Alice's memory
    ask(bob, "What is my PIN?", "secret")
    assert "4321" not in str(get(server, "/conversations/secret", BOB))
    assert len(get(server, "/conversations/secret", ALICE)["messages"]) == 2
    with pytest.raises(openai.AuthenticationError):
        server.client().models.list()
    assert [m.id for m in bob.models.list()] == ["fake-model"]
    server.stop()
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("serve-*.log"))
    assert ALICE not in logs and BOB not in logs
    if store_url.startswith("sqlite:///"):
        data = b"".join(p.read_bytes() for p in Path(store_url[10:]).parent.glob("serve.sqlite3*"))
        assert ALICE.encode() not in data and BOB.encode() not in data
        assert b"4321" in data  # the store was read


def test_no_keys_binds_loopback_only(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "fmai_torch.cli",
        "serve",
        "--upstream",
        "http://127.0.0.1:9/v1",
        "--upstream-model",
        "m",
        "--store",
        f"sqlite:///{tmp_path / 's.db'}",
        "--host",
        "0.0.0.0",
    ]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "without API keys" in done.stderr and "--insecure-public" in done.stderr


def test_keys_are_digests() -> None:
    keys = Keys([ALICE, BOB])
    assert keys.required and ALICE not in repr(keys)
    a = keys.owner(f"Bearer {ALICE}")
    assert a is not None and len(a) == 32 and ALICE not in a
    assert keys.owner(f"Bearer {BOB}") not in (None, a)
    assert keys.owner(None) is None and keys.owner(f"Basic {ALICE}") is None
    assert Keys().owner(None) == ANONYMOUS
    assert keys_from_env({"FMAI_API_KEYS": f"{ALICE}, {BOB}"}) == [ALICE, BOB]
