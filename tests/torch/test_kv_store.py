"""Persistent KV: `save(path, kv=True)` / `load` restore the cache only when it provably fits."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

from conftest import HYBRID_STABLE, build_model  # noqa: E402

from fmai_core import FiniteMemoryLLM  # noqa: E402
from fmai_core.engine import kv_path  # noqa: E402
from fmai_torch import HFBackend, cli  # noqa: E402

TURNS = [
    "hello , my name is ada and my sister is called eve .",
    "i live in paris with two cats and a dog .",
    "what is the name of my sister ?",
    "tell me about rome and london in the summer .",
]
KW = {"policy": "sliding", "max_tokens": 400, "max_new_tokens": 12}


def _saved(make_backend, tmp_path: Path) -> tuple[Path, FiniteMemoryLLM]:  # type: ignore[no-untyped-def]
    llm = FiniteMemoryLLM(make_backend(), **KW)
    for text in TURNS[:3]:
        llm.chat(text)
    path = tmp_path / "chat.json"
    llm.save(path, kv=True)
    return path, llm


def test_restored_cache_serves_the_first_turn_exactly(make_backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, warm = _saved(make_backend, tmp_path)
    assert Path(kv_path(path)).stat().st_size > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good file restores silently
        restored = FiniteMemoryLLM.load(path, make_backend())
    assert restored.backend.cached_tokens == warm.backend.cached_tokens > 0
    assert restored.backend._kv.ids == warm.backend._kv.ids
    cold = FiniteMemoryLLM.load(path, make_backend(), kv=False)
    reference = FiniteMemoryLLM.load(path, make_backend(kv_reuse=False), kv=False)
    a, b, c = restored.chat(TURNS[3]), warm.chat(TURNS[3]), cold.chat(TURNS[3])
    d = reference.chat(TURNS[3])
    assert a.response == b.response == c.response == d.response
    assert a.stats.reused_tokens == b.stats.reused_tokens > 0.8 * a.stats.prompt_tokens
    assert c.stats.reused_tokens == 0


def _refused(make_backend, path: Path, backend=None) -> tuple[str, HFBackend]:  # type: ignore[no-untyped-def]
    backend = backend or make_backend()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm = FiniteMemoryLLM.load(path, backend)
    assert backend.cached_tokens == 0  # nothing of the file was kept
    messages = [str(w.message) for w in caught if "was not restored" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in caught]
    # and the turn is still right: the same reply as a backend that never reuses
    plain = HFBackend(backend.model, tokenizer=backend.tokenizer, kv_reuse=False)
    reference = FiniteMemoryLLM.load(path, plain, kv=False)
    first = llm.chat(TURNS[3])
    assert first.response == reference.chat(TURNS[3]).response
    assert first.stats.reused_tokens == 0
    return messages[0], backend


def test_other_weights_refused(make_backend, tiny_parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = _saved(make_backend, tmp_path)
    _, tokenizer = tiny_parts
    other = HFBackend(build_model(len(tokenizer), seed=1), tokenizer=tokenizer)
    message, _ = _refused(make_backend, path, other)
    assert "another model" in message


def test_other_dtype_refused(make_backend, tiny_parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = _saved(make_backend, tmp_path)
    model, tokenizer = tiny_parts
    as_float32 = build_model(len(tokenizer)).to(torch.float32)
    message, _ = _refused(make_backend, path, HFBackend(as_float32, tokenizer=tokenizer))
    assert "another dtype" in message
    assert model.dtype == torch.float64  # the shared model is untouched


def test_other_tokenizer_refused(make_backend, tiny_parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = _saved(make_backend, tmp_path)
    backend = make_backend()
    backend.tokenizer_id = "another-tokenizer"  # as a backend with another vocabulary reports
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FiniteMemoryLLM.load(path, backend, recount=True)
    assert backend.cached_tokens == 0
    assert any("another tokenizer" in str(w.message) for w in caught)


def test_changed_checkpoint_refused(make_backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint saved again without kv (it moved on) no longer matches the old KV file."""
    path, llm = _saved(make_backend, tmp_path)
    llm.chat(TURNS[3])
    llm.save(path)  # kv=False: the KV file beside it is now stale
    message, _ = _refused(make_backend, path)
    assert "another checkpoint" in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "ids"])
def test_damaged_file_refused(make_backend, tmp_path: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    path, _ = _saved(make_backend, tmp_path)
    kv = Path(kv_path(path))
    data = kv.read_bytes()
    if damage == "truncate":
        kv.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        kv.write_bytes(b"\x00" * 64)
    else:  # the ids tensor's bytes changed, the header intact
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(kv), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        tensors["ids"] = tensors["ids"].clone()
        tensors["ids"][3] += 1
        save_file(tensors, str(kv), metadata=meta)
    message, _ = _refused(make_backend, path)
    assert "unreadable" in message or "damaged" in message


def test_missing_file_warns_only_when_asked(make_backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = _saved(make_backend, tmp_path)
    Path(kv_path(path)).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FiniteMemoryLLM.load(path, make_backend())  # kv=None: nothing to restore, no noise
    with pytest.warns(UserWarning, match="No KV cache to restore"):
        FiniteMemoryLLM.load(path, make_backend(), kv=True)


def test_cli_checkpoint_keeps_the_kv(tiny_dir: str, tmp_path: Path) -> None:
    ckpt = tmp_path / "chat.json"
    script = tmp_path / "msgs.txt"

    def run(lines: list[str], *extra: str) -> list[dict[str, object]]:
        script.write_text("\n".join(lines) + "\n")
        out = io.StringIO()
        args = ["chat", "--model", tiny_dir, "--policy", "sliding", "--max-new-tokens", "8"]
        code = cli.main(
            [*args, "--checkpoint", str(ckpt), "--script", str(script), "--json", *extra], out=out
        )
        assert code == 0
        return [json.loads(line) for line in out.getvalue().splitlines()]

    run(TURNS[:2])
    assert Path(kv_path(ckpt)).exists()
    resumed = run(TURNS[2:3])
    assert resumed[0]["reused_tokens"] > 0.5 * resumed[0]["prompt_tokens"]  # type: ignore[operator]
    Path(kv_path(ckpt)).unlink()
    again = run(TURNS[3:4], "--no-kv-save")
    assert again[0]["reused_tokens"] == 0
    assert not Path(kv_path(ckpt)).exists()


def test_kept_evicted_tokens_are_saved_with_the_cache(make_backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`kv_keep_evicted`: the kept evicted runs go into the KV file and come back, bit for
    bit, so the conversation after a restart does exactly what it would have done without
    one (before, they were lost: the next turns spliced less and replied otherwise). A
    damaged kept run is refused like the rest of the file."""
    from test_kv_exact import USER_TURNS

    kw = {**HYBRID_STABLE, "max_tokens": 200, "max_new_tokens": 8}
    warm = FiniteMemoryLLM(make_backend(kv_edit="rerotate", kv_keep_evicted=4096), **kw)
    for i in range(10):
        warm.chat(USER_TURNS[i % 8])
    kept = warm.backend._kv.evicted
    assert sum(len(ids) for ids, _, _ in kept) > 0
    path = tmp_path / "chat.json"
    warm.save(path, kv=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = FiniteMemoryLLM.load(
            path, make_backend(kv_edit="rerotate", kv_keep_evicted=4096)
        )
    back = restored.backend._kv.evicted
    assert [(i, p) for i, p, _ in back] == [(i, p) for i, p, _ in kept]
    for (_, _, a), (_, _, b) in zip(kept, back):
        assert all(torch.equal(k0, k1) and torch.equal(v0, v1) for (k0, v0), (k1, v1) in zip(a, b))
    spliced = 0
    for i in range(10, 16):
        a, b = warm.chat(USER_TURNS[i % 8]), restored.chat(USER_TURNS[i % 8])
        assert a.response == b.response
        assert a.stats.reused_tokens == b.stats.reused_tokens
        assert a.stats.kv.get("from_evicted") == b.stats.kv.get("from_evicted")
        spliced += a.stats.kv.get("from_evicted", 0)
    assert spliced > 0
    # a backend that keeps nothing ignores them; a damaged kept run refuses the file
    plain = make_backend(kv_edit="rerotate")
    assert FiniteMemoryLLM.load(path, plain).backend._kv.evicted == []
    assert plain.cached_tokens > 0
    from safetensors import safe_open
    from safetensors.torch import save_file

    kv = Path(kv_path(path))
    with safe_open(str(kv), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert int(meta["evicted_runs"]) == len(kept)
    tensors["e.0.ids"] = tensors["e.0.ids"].clone()
    tensors["e.0.ids"][0] += 1
    save_file(tensors, str(kv), metadata=meta)
    keeping = make_backend(kv_edit="rerotate", kv_keep_evicted=4096)
    message, _ = _refused(make_backend, path, keeping)
    assert "damaged" in message


@pytest.mark.parametrize("mode", ["rerotate", "keep-positions"])
def test_a_cache_an_edit_mode_wrote_is_refused_by_recompute(
    make_backend, tmp_path: Path, mode: str
) -> None:  # type: ignore[no-untyped-def]
    """A KV file written by an edit mode after it edited its cache (keys computed beside
    tokens since cut, re-rotated or at gapped positions) would make a `recompute` backend
    reply otherwise than one that never reuses; it is refused (before, restored silently).
    The edit modes themselves still restore it."""
    kw = {**KW, "max_tokens": 160, "system_prompt": "you are a good friend ."}
    llm = FiniteMemoryLLM(make_backend(kv_edit=mode), **kw)
    edited = False
    for text in TURNS * 3:
        edited = edited or llm.chat(text).stats.kv["applied"] == mode
    assert edited
    path = tmp_path / "chat.json"
    llm.save(path, kv=True)
    message, _ = _refused(make_backend, path)
    assert "another kv_edit mode" in message
    again = make_backend(kv_edit=mode)
    FiniteMemoryLLM.load(path, again)
    assert again.cached_tokens == llm.backend.cached_tokens > 0
