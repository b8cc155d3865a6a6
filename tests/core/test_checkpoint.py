"""Checkpoints: round trip, atomic writes, validation with clear errors, no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.errors import CheckpointError
from fmai_core.testing import EchoBackend


def _conversation() -> FiniteMemoryLLM:
    llm = FiniteMemoryLLM(
        EchoBackend(),
        "sliding",
        max_tokens=120,
        max_new_tokens=16,
        system_prompt="Be brief.",
        max_policy_ms=None,
        temperature=0.0,
    )
    llm.pin("The user's sister is Ada.")
    for i in range(12):
        llm.chat(f"message {i} about the weather in town {i}")
    return llm


def test_round_trip_restores_state_settings_and_stats(tmp_path: Path) -> None:
    llm = _conversation()
    path = tmp_path / "chat.json"
    llm.save(path)
    again = FiniteMemoryLLM.load(path, EchoBackend())
    assert again.state.to_dict() == llm.state.to_dict()
    assert again.stats == llm.stats
    assert again.context("next") == llm.context("next")
    assert again.max_tokens == 120 and again.system_prompt == "Be brief."
    assert again.chat("next").response == llm.chat("next").response


def test_overrides_on_load(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    _conversation().save(path)
    assert FiniteMemoryLLM.load(path, EchoBackend(), max_tokens=400).max_tokens == 400


def test_checkpoint_is_plain_versioned_json_without_secrets(tmp_path: Path) -> None:
    backend = EchoBackend()
    backend.api_key = "sk-secret-123"  # type: ignore[attr-defined]
    llm = FiniteMemoryLLM(backend, "sliding", max_tokens=200, max_new_tokens=16, max_policy_ms=None)
    llm.chat("hello")
    path = tmp_path / "c.json"
    llm.save(path)
    text = path.read_text()
    doc = json.loads(text)
    assert doc["format"] == "fmai-checkpoint" and doc["version"] == 2  # 2: with a checksum
    assert doc["tokenizer_id"] == backend.tokenizer_id
    assert "sk-secret" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temp file left


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "chat.json"
    llm = _conversation()
    llm.save(path)
    before = path.read_text()
    llm.chat("one more turn")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("fmai_core.checkpoint.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        llm.save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]


def test_unserialisable_generation_params_are_skipped(tmp_path: Path) -> None:
    llm = _conversation()
    llm.generation["callback"] = object()
    llm.save(tmp_path / "c.json")
    assert "callback" not in json.loads((tmp_path / "c.json").read_text())["settings"]["generation"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not a readable fmai checkpoint"),
        ('{"hello": 1}', "not an fmai checkpoint"),
        ('{"format": "fmai-checkpoint", "version": 99}', "version 99"),
        ('{"format": "fmai-checkpoint", "version": 1, "tokenizer_id": "other"}', "tokenizer"),
        ('{"format": "fmai-checkpoint", "version": 1, "tokenizer_id": "fmai-echo-v1"}', "damaged"),
    ],
)
def test_bad_checkpoints_raise_clear_errors(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(CheckpointError, match=match):
        FiniteMemoryLLM.load(path, EchoBackend())


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="No checkpoint"):
        FiniteMemoryLLM.load(tmp_path / "none.json", EchoBackend())


def test_archive_survives_round_trip(tmp_path: Path) -> None:
    llm = _conversation()
    assert llm.state.archive  # the tight budget evicted history
    llm.extend([Message("user", "I moved to Lisbon.")])
    path = tmp_path / "chat.json"
    llm.save(path)
    again = FiniteMemoryLLM.load(path, EchoBackend())
    assert again.state.archive == llm.state.archive


def test_snapshot_is_immutable_and_round_trips_through_the_file(tmp_path: Path) -> None:
    import dataclasses

    from fmai_core.checkpoint import document, read_checkpoint

    llm = _conversation()
    snap = llm.snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.state = llm.state  # type: ignore[misc]
    turns = snap.stats.turns
    llm.chat("one more turn")  # the snapshot is a copy: later turns do not change it
    assert snap.stats.turns == turns and llm.snapshot().stats.turns == turns + 1
    path = tmp_path / "chat.json"
    llm.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == document(llm.snapshot())
    back = read_checkpoint(path, EchoBackend().tokenizer_id)
    now = llm.snapshot()
    assert back.state == now.state and back.config == now.config and back.stats == now.stats
    assert (back.policy, back.tokenizer_id) == ("sliding", now.tokenizer_id)
    assert back.generation == {"temperature": 0.0}


def test_checkpoint_module_never_reaches_into_the_engine() -> None:
    import ast

    from fmai_core import checkpoint

    tree = ast.parse(Path(checkpoint.__file__).read_text(encoding="utf-8"))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "fmai_core.engine" not in imported  # it gets a Snapshot, never the engine
    private = {
        (node.value.id, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }
    assert private == set(), private


def test_document_text_is_the_document_encoded_once_and_reuses_segments(tmp_path: Path) -> None:
    from fmai_core.checkpoint import checksum, document, document_text, read_checkpoint

    llm = _conversation()
    llm.chat('a message with "quotes", a tab\tand ünïcödé ✓ to encode')
    fragments: dict = {}
    for turn in range(3):
        if turn:
            llm.chat(f"turn {turn} of the cached encoding")
        snap = llm.snapshot()
        text = document_text(snap, fragments)
        doc = json.loads(text)
        assert doc == document(snap)
        assert doc["checksum"] == checksum(doc)
        # the text before the checksum is the canonical JSON the checksum is taken over
        body = {k: v for k, v in doc.items() if k != "checksum"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert text == canonical[:-1] + f',"checksum":"{doc["checksum"]}"}}'
        state = snap.state
        segments = {*state.pinned, *state.history, *state.archive}
        assert {s for s, _ in fragments.values()} == segments  # this state's segments only
        path = tmp_path / f"t{turn}.json"
        path.write_text(text, encoding="utf-8")
        assert read_checkpoint(path, EchoBackend().tokenizer_id).state == state
    assert document_text(llm.snapshot()) == document_text(llm.snapshot(), fragments)


def test_document_text_with_a_message_holding_the_marker_shape() -> None:
    import dataclasses

    from fmai_core.checkpoint import document, document_text
    from fmai_core.segments import Segment

    llm = _conversation()
    llm.chat('\x00fmai:0123:archive\x00 and ["x"] look like markers')
    snap = llm.snapshot()
    assert json.loads(document_text(snap, {})) == document(snap)
    # a summary (one segment, not a list) goes in alike
    summary = Segment(10_000, 10_000, "system", "Earlier: the weather.", 6, kind="summary")
    snap = dataclasses.replace(snap, state=dataclasses.replace(snap.state, summary=summary))
    assert json.loads(document_text(snap, {})) == document(snap)


def test_loaded_conversation_recalls_as_the_saved_one_for_a_common_term(tmp_path: Path) -> None:
    # A term in more messages than the recall index scans (SCAN_LIMIT, newest first): the
    # loaded index must scan the same messages, so it must index them in conversation
    # order (it indexed the history before the archive, so it scanned older messages).
    llm = FiniteMemoryLLM(
        EchoBackend(), "semantic", max_tokens=300, max_new_tokens=32, max_policy_ms=None
    )
    messages: list[Message] = []
    for i in range(150):  # older notes are shorter: they score higher when scanned
        messages += [
            Message("user", f"zebra note {i} " + "filler " * (150 - i)),
            Message("assistant", "ok"),
        ]
    llm.extend(messages)
    llm.chat("zebra")  # evicts most of it to the archive
    path = tmp_path / "chat.json"
    llm.save(path)
    again = FiniteMemoryLLM.load(path, EchoBackend())
    assert len(again.state.archive) > 128
    assert again.context("zebra") == llm.context("zebra")


@pytest.mark.parametrize("policy", ["importance", "semantic", "hybrid"])
def test_loaded_conversation_plans_as_the_saved_one_after_a_full_archive_dropped(
    tmp_path: Path, policy: str
) -> None:
    # The messages a full archive drops must weigh nothing in recall (the recall index kept
    # them until it grew to twice the record, so their terms moved every score), as they
    # weigh nothing in the index that load builds from the record.
    import random

    rng = random.Random(0)
    words = [f"topic{i}" for i in range(40)] + ["Alice", "Bob", "Paris", "42", "1999", "cat"]

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n)) + "."

    llm = FiniteMemoryLLM(
        EchoBackend(),
        policy,
        max_tokens=400,
        max_new_tokens=64,
        archive_limit=5,
        max_policy_ms=None,
    )
    path = tmp_path / "chat.json"
    for turn in range(24):
        llm.chat(text([3, 10, 40, 120][turn % 4]))
        llm.save(path)
        again = FiniteMemoryLLM.load(path, EchoBackend())
        for query in ("what is topic3 Alice", "topic7 Paris 42"):
            assert again.context(query) == llm.context(query), turn
    assert llm.state.archive_dropped > 0


def test_saves_every_turn_encode_only_what_changed_and_equal_a_full_encoding(
    tmp_path: Path,
) -> None:
    """`save` keeps its segments' JSON between calls (a conversation saved every turn, as
    `fmai chat --checkpoint` does, encodes only its new segments): each file still equals
    the whole document of that moment, through evictions, a reset and an extend, and loads
    back to the same next prompt."""
    from fmai_core.checkpoint import document

    llm = FiniteMemoryLLM(
        EchoBackend(), "hybrid", max_tokens=160, max_new_tokens=16, max_policy_ms=None
    )
    path = tmp_path / "c.json"
    for i in range(14):
        if i == 9:
            llm.reset()
        if i == 11:
            llm.extend([Message("user", "an extended line"), Message("assistant", "noted")])
        llm.chat(f"turn {i}: my cat Tom likes sardines number {i}. The weather is mild.")
        llm.save(path)
        assert json.loads(path.read_text(encoding="utf-8")) == document(llm.snapshot())
    again = FiniteMemoryLLM.load(path, EchoBackend())
    assert again.context("what does Tom like?") == llm.context("what does Tom like?")
