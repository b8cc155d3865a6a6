"""Many conversations on one HFBackend: isolated caches, LRU to host and disk, exact restore."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

from conftest import HYBRID_STABLE  # noqa: E402

from fmai_core import FiniteMemoryLLM  # noqa: E402

TALKS = {
    "ada": [
        "hello , my name is ada and my sister is called eve .",
        "i live in paris with two cats and a dog .",
        "what is the name of my sister ?",
    ],
    "bob": [
        "hi , i am bob and i like trains and music .",
        "we travel to tokyo by train next week .",
        "what do you think of my cats ?",
    ],
    "eve": [
        "my favourite food is pizza and i like tea in the morning .",
        "tell me about rome and london in the summer .",
        "do you remember where i live ?",
    ],
}
KW = {"policy": "sliding", "max_tokens": 400, "max_new_tokens": 10}


def _round_robin(backend, make_backend):  # type: ignore[no-untyped-def]
    """Run the three talks turn by turn on `backend`'s conversations and, for reference,
    each on a backend of its own that recomputes every prompt; return the stats."""
    pooled = {k: FiniteMemoryLLM(backend.conversation(k), **KW) for k in TALKS}
    alone = {k: FiniteMemoryLLM(make_backend(kv_reuse=False), **KW) for k in TALKS}
    rows = []
    for turn in range(3):
        for key, lines in TALKS.items():
            a, b = pooled[key].chat(lines[turn]), alone[key].chat(lines[turn])
            assert a.response == b.response  # nothing of another conversation leaked in
            rows.append((key, turn, a.stats))
    return rows


def test_conversations_are_isolated_and_each_reuses_its_own(make_backend) -> None:  # type: ignore[no-untyped-def]
    backend = make_backend()
    rows = _round_robin(backend, make_backend)
    for _key, turn, stats in rows:
        assert stats.kv["cache_from"] == ("new" if turn == 0 else "device")
        if turn:
            assert stats.reused_tokens > 0.5 * stats.prompt_tokens
    assert len(backend.pool) == 3 and backend.cached_tokens == 0  # the default one is apart


def test_lru_moves_to_host_then_disk_and_restores_exactly(make_backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backend = make_backend(kv_device_bytes=1, kv_host_bytes=1, kv_disk_dir=tmp_path)
    rows = _round_robin(backend, make_backend)
    for _key, turn, stats in rows:
        if turn:
            assert stats.kv["cache_from"] == "disk"
            assert stats.reused_tokens > 0.5 * stats.prompt_tokens
    pool = backend.pool
    assert pool.moves["to_disk"] >= 6 and pool.moves["from_disk"] >= 6
    # bit for bit: a cache that went to disk comes back with the same tensors and ids
    kv, _ = pool.get("ada")
    before = [(k.clone(), v.clone()) for k, v in kv.layers()]
    ids = list(kv.ids)
    pool.enforce(keep="bob")
    assert pool.tier("ada") == "disk" and len(list(tmp_path.iterdir())) >= 1
    kv, came = pool.get("ada")
    assert came == "disk" and kv.ids == ids
    for (k0, v0), (k1, v1) in zip(before, kv.layers()):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_host_tier_without_disk(make_backend) -> None:  # type: ignore[no-untyped-def]
    backend = make_backend(kv_device_bytes=1)
    rows = _round_robin(backend, make_backend)
    assert all(s.kv["cache_from"] == "host" for _, turn, s in rows if turn)
    assert backend.pool.bytes("host") > 0


def test_without_disk_a_full_host_drops_and_recomputes(make_backend) -> None:  # type: ignore[no-untyped-def]
    backend = make_backend(kv_device_bytes=1, kv_host_bytes=1)
    rows = _round_robin(backend, make_backend)  # replies still match the reference
    assert all(s.reused_tokens == 0 for _, turn, s in rows if turn)
    assert backend.pool.moves["dropped"] >= 6


def test_a_disk_file_is_read_only_for_its_own_conversation(make_backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backend = make_backend(kv_device_bytes=1, kv_host_bytes=1, kv_disk_dir=tmp_path)
    pool = backend.pool
    for key in ("ada", "bob"):
        FiniteMemoryLLM(backend.conversation(key), **KW).chat(TALKS[key][0])
    pool.enforce()
    ada, bob = pool._path("ada"), pool._path("bob")
    assert ada is not None and bob is not None and ada.exists() and bob.exists()
    ada.replace(bob)  # bob's file is now ada's cache
    kv, came = pool.get("bob")
    assert came == "disk" and len(kv) == 0  # refused: recomputed, never ada's tokens


def test_kept_evicted_tokens_count_in_the_budget_and_move_with_the_cache(make_backend) -> None:  # type: ignore[no-untyped-def]
    """`kv_keep_evicted`: the kept keys and values are part of a conversation's bytes (so
    the device budget sees them) and go to host memory and back with its cache."""
    backend = make_backend(kv_edit="rerotate", kv_keep_evicted=4096, kv_device_bytes=1)
    kw = {**KW, "max_tokens": 120}
    ada = FiniteMemoryLLM(backend.conversation("ada"), **kw)
    bob = FiniteMemoryLLM(backend.conversation("bob"), **kw)
    for line in TALKS["ada"] * 3:  # evicts: the cut tokens are kept
        ada.chat(line)
    kv, _ = backend.pool.get("ada")
    assert kv.evicted_tokens > 0
    held = sum(k.numel() * k.element_size() * 2 for k, _ in kv.layers())
    assert kv.nbytes > held
    bob.chat(TALKS["bob"][0])  # ada's cache, kept tokens included, goes to host memory
    assert backend.pool.tier("ada") == "host"
    assert ada.chat(TALKS["ada"][0]).stats.kv["cache_from"] == "host"


def test_kept_evicted_tokens_go_to_disk_and_back(make_backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Pushed to disk, a conversation's kept evicted tokens are written with its cache and
    come back bit for bit (before, the disk tier dropped them): its replies and reuse stay
    those of a conversation whose cache never left the device."""
    kw = {**KW, **HYBRID_STABLE, "max_tokens": 200, "max_new_tokens": 8}
    opts = {"kv_edit": "rerotate", "kv_keep_evicted": 4096}
    pooled = make_backend(**opts, kv_device_bytes=1, kv_host_bytes=1, kv_disk_dir=tmp_path)
    alone = make_backend(**opts)
    talks = {k: FiniteMemoryLLM(pooled.conversation(k), **kw) for k in TALKS}
    refs = {k: FiniteMemoryLLM(alone.conversation(k), **kw) for k in TALKS}
    spliced = 0
    for turn in range(12):
        for key, lines in TALKS.items():
            text = lines[turn % 3] if turn % 2 else TALKS["ada"][turn % 3]
            a, b = talks[key].chat(text), refs[key].chat(text)
            assert a.response == b.response and a.stats.reused_tokens == b.stats.reused_tokens
            assert a.stats.kv.get("from_evicted") == b.stats.kv.get("from_evicted")
            spliced += a.stats.kv.get("from_evicted", 0)
            if turn:
                assert a.stats.kv["cache_from"] == "disk"
    assert spliced > 0
    kv, _ = pooled.pool.get("ada")
    want = alone.pool.get("ada")[0].evicted
    assert kv.evicted_tokens > 0 and [i for i, _, _ in kv.evicted] == [i for i, _, _ in want]


def test_a_disk_that_cannot_be_written_drops_instead_of_failing_turns(
    make_backend, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A `kv_disk_dir` that cannot be written (a file in its place here; a full disk
    alike) drops the cache that should go there, and says why; before, the error came out
    of the turn that pushed another conversation's cache out, and out of every later one."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("in the way")
    backend = make_backend(kv_device_bytes=1, kv_host_bytes=1, kv_disk_dir=blocked)
    rows = _round_robin(backend, make_backend)  # every reply still matches the reference
    assert all(s.reused_tokens == 0 for _, turn, s in rows if turn)
    pool = backend.pool
    assert pool.moves["disk_errors"] >= 6 and pool.moves["dropped"] >= 6
    assert pool.moves["to_disk"] == 0 and pool.disk_error is not None
