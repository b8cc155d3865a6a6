"""Checkpoint hardening (issue 11): checksum, full schema check, save errors, re-count."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.errors import CheckpointError
from fmai_core.testing import EchoBackend


def _conversation(**kw: Any) -> FiniteMemoryLLM:
    kw.setdefault("policy", "sliding")
    llm = FiniteMemoryLLM(
        kw.pop("backend", EchoBackend()),
        max_tokens=120,
        max_new_tokens=16,
        system_prompt="Be brief.",
        max_policy_ms=None,
        **kw,
    )
    llm.pin("The user's sister is Ada.")
    llm.extend([Message("user", "A long one. " * 30, name="Bo", timestamp="2024-01-02")])
    for i in range(8):
        llm.chat(f"message {i} about the weather in town {i}, café ü")
    return llm


def _content(llm: FiniteMemoryLLM) -> tuple[Any, ...]:
    return (llm.state.to_dict(), llm.stats, llm.max_tokens, llm.system_prompt, llm.policy.name)


def _doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def _write(path: Path, doc: dict[str, Any], *, version: int = 1) -> None:
    """Write `doc` as a version-1 file (no checksum), so that only the schema check guards."""
    doc = {k: v for k, v in doc.items() if k != "checksum"}
    doc["version"] = version
    if isinstance(doc.get("settings"), dict):
        doc["settings"].pop("policy_config", None)
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.fixture
def saved(tmp_path: Path) -> tuple[FiniteMemoryLLM, Path]:
    llm = _conversation()
    path = tmp_path / "chat.json"
    llm.save(path)
    return llm, path


# -- defect 9: checksum and full schema check ----------------------------------------------
def test_version_2_has_a_checksum_and_round_trips(saved: tuple[FiniteMemoryLLM, Path]) -> None:
    llm, path = saved
    doc = _doc(path)
    assert doc["version"] == 2 and doc["checksum"].startswith("sha256:")
    assert _content(FiniteMemoryLLM.load(path, EchoBackend())) == _content(llm)


def test_random_single_bit_flips_never_load_altered_content(
    saved: tuple[FiniteMemoryLLM, Path], tmp_path: Path
) -> None:
    llm, path = saved
    original = path.read_bytes()
    expected = _content(llm)
    rng = random.Random(11)
    rejected = identical = 0
    flipped = tmp_path / "flipped.json"
    for _ in range(300):
        data = bytearray(original)
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        flipped.write_bytes(bytes(data))
        try:
            again = FiniteMemoryLLM.load(flipped, EchoBackend())
        except CheckpointError:
            rejected += 1
            continue
        assert _content(again) == expected, f"bit flip at byte {at} loaded altered content"
        identical += 1
    assert rejected + identical == 300
    assert rejected >= 290  # only a flip in insignificant bytes may load, and then unchanged
    print(f"bit flips: {rejected} of 300 rejected, {identical} loaded identical, 0 altered")


def test_an_edited_value_fails_the_checksum(saved: tuple[FiniteMemoryLLM, Path]) -> None:
    _, path = saved
    doc = _doc(path)
    doc["state"]["history"][0]["text"] = "something I never said"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(CheckpointError, match="checksum"):
        FiniteMemoryLLM.load(path, EchoBackend())


def _mutations() -> list[tuple[str, Any]]:
    def seg(field: str, value: Any, where: str = "history") -> Any:
        def apply(doc: dict[str, Any]) -> None:
            doc["state"][where][0][field] = value

        return apply

    def dup_id(doc: dict[str, Any]) -> None:
        doc["state"]["history"][1]["id"] = doc["state"]["history"][0]["id"]

    def swap(doc: dict[str, Any]) -> None:
        h = doc["state"]["history"]
        h[0], h[1] = h[1], h[0]

    def put(*keys: str, value: Any) -> Any:
        def apply(doc: dict[str, Any]) -> None:
            target = doc
            for k in keys[:-1]:
                target = target[k]
            target[keys[-1]] = value

        return apply

    def drop(*keys: str) -> Any:
        def apply(doc: dict[str, Any]) -> None:
            target = doc
            for k in keys[:-1]:
                target = target[k]
            del target[keys[-1]]

        return apply

    return [
        ("role tool", seg("role", "tool")),
        ("negative tokens", seg("tokens", -3)),
        ("float tokens", seg("tokens", 2.5)),
        ("bool tokens", seg("tokens", True)),
        ("string id", seg("id", "7")),
        ("unknown kind", seg("kind", "note")),
        ("pinned kind in history", seg("kind", "pinned")),
        ("text not a string", seg("text", 12)),
        ("lone surrogate text", seg("text", "caf\udce9")),
        ("part out of range", seg("part", 5)),
        ("zero parts", seg("parts", 0)),
        ("unknown segment key", seg("colour", "red")),
        ("missing segment key", lambda d: d["state"]["history"][0].pop("tokens")),
        ("duplicate ids", dup_id),
        ("ids not increasing", swap),
        ("id past next_segment_id", put("state", "next_segment_id", value=0)),
        ("negative turn", put("state", "turn", value=-1)),
        ("state is a list", put("state", value=[])),
        ("history is a dict", put("state", "history", value={})),
        ("settings is a list", put("settings", value=[1])),
        ("max_tokens a string", put("settings", "max_tokens", value="120")),
        ("unknown setting", put("settings", "low_watter", value=0.1)),
        ("stats negative", put("stats", "turns", value=-1)),
        ("stats unknown", put("stats", "colour", value=1)),
        ("unknown top-level key", put("extra", value=1)),
        ("missing state", drop("state")),
        ("pinned with a user role", seg("role", "user", "pinned")),
    ]


@pytest.mark.parametrize(("label", "mutate"), _mutations(), ids=[m[0] for m in _mutations()])
def test_schema_check_refuses_damaged_content(
    saved: tuple[FiniteMemoryLLM, Path], label: str, mutate: Any
) -> None:
    _, path = saved
    doc = _doc(path)
    mutate(doc)
    _write(path, doc)  # version 1: no checksum, the schema check alone must catch it
    with pytest.raises(CheckpointError, match="damaged"):
        FiniteMemoryLLM.load(path, EchoBackend())


def test_deep_nesting_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(
        '{"format": "fmai-checkpoint", "version": 2, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    with pytest.raises(CheckpointError):
        FiniteMemoryLLM.load(path, EchoBackend())


def test_an_int_of_more_digits_than_python_converts_is_a_checkpoint_error(tmp_path: Path) -> None:
    # json.loads raised a bare ValueError ("Exceeds the limit (4300 digits) for integer
    # string conversion"), not the CheckpointError that load promises.
    path = tmp_path / "digits.json"
    path.write_text('{"format": "fmai-checkpoint", "version": 2, "turn": ' + "1" * 5000 + "}")
    with pytest.raises(CheckpointError, match="not a readable fmai checkpoint"):
        FiniteMemoryLLM.load(path, EchoBackend())


def test_version_1_files_still_load(saved: tuple[FiniteMemoryLLM, Path]) -> None:
    llm, path = saved
    _write(path, _doc(path))
    assert _content(FiniteMemoryLLM.load(path, EchoBackend())) == _content(llm)


# -- defect 9: save errors, stale temp files, symlinks --------------------------------------
def test_save_into_a_path_under_a_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    llm = _conversation()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        llm.save(tmp_path / "afile" / "chat.json")


def test_save_into_a_read_only_folder_is_a_checkpoint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = _conversation()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("fmai_core.checkpoint.tempfile.mkstemp", refuse)  # root ignores chmod
    with pytest.raises(CheckpointError, match="not writable") as info:
        llm.save(tmp_path / "chat.json")
    assert isinstance(info.value, OSError)  # still an OSError for code that catches those
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_a_crashed_save_are_cleaned_up(tmp_path: Path) -> None:
    llm = _conversation()
    path = tmp_path / "chat.json"
    old = time.time() - 3600
    stale = [tmp_path / ".chat.json.abc123.tmp", tmp_path / ".chat.json.999999999.x1.tmp"]
    for p in stale:
        p.write_text("half written")
    os.utime(stale[0], (old, old))  # an old-style name: removed once it is old
    fresh = tmp_path / f".chat.json.{os.getpid()}.inflight.tmp"  # a save in progress here
    fresh.write_text("being written")
    other = tmp_path / ".other.json.abc.tmp"
    other.write_text("another checkpoint's")
    os.utime(other, (old, old))
    llm.save(path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["chat.json", fresh.name, other.name])


def test_saving_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    llm = _conversation()
    real = tmp_path / "store" / "chat.json"
    real.parent.mkdir()
    link = tmp_path / "chat.json"
    link.symlink_to(real)  # dangling until the first save
    llm.save(link)
    assert link.is_symlink() and real.is_file()
    llm.chat("one more")
    llm.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert _content(FiniteMemoryLLM.load(link, EchoBackend())) == _content(llm)
    assert sorted(p.name for p in real.parent.iterdir()) == ["chat.json"]


# -- defect 8: a tokenizer change re-counts instead of locking the checkpoint out -----------
class Counted(EchoBackend):
    """An EchoBackend under another tokenizer identity that counts `scale` tokens a word."""

    def __init__(self, tokenizer_id: str, scale: int = 1) -> None:
        super().__init__()
        self.tokenizer_id = tokenizer_id  # type: ignore[misc]
        self.scale = scale

    def count_text(self, text: str) -> int:
        return super().count_text(text) * self.scale

    def count_tokens(self, messages: Any) -> int:
        return sum(self.count_text(m.content) + 3 for m in messages) + 2


def _expected_cost(llm: FiniteMemoryLLM, seg: Any) -> int:
    c = llm.counter
    if seg.kind == "message":
        return c.message(seg.text)
    if seg.kind == "part":
        return c.text(seg.text) + (c.message_overhead if seg.part == 0 else c.separator)
    return c.text(seg.text)  # pinned facts and the summary


def _assert_recounted(llm: FiniteMemoryLLM) -> None:
    s = llm.state
    c = llm.counter
    groups = [s.pinned, s.history, s.archive, (s.summary,) if s.summary else ()]
    assert any(groups)
    for group in groups:
        parts: dict[int, list[Any]] = {}
        for seg in group:
            if seg.kind == "part":
                parts.setdefault(seg.message_id, []).append(seg)
            else:
                assert seg.tokens == _expected_cost(llm, seg), seg
        for pieces in parts.values():
            pieces.sort(key=lambda p: p.part)
            if [p.part for p in pieces] != list(range(pieces[0].parts)):
                for seg in pieces:  # a message with parts elsewhere: each part on its own
                    assert seg.tokens == _expected_cost(llm, seg), seg
                continue
            # all its parts: together they cost what the whole message costs
            text = pieces[0].text + "".join(p.sep + p.text for p in pieces[1:])
            assert sum(p.tokens for p in pieces) == c.message(text), pieces
            assert all(p.tokens >= c.text(p.text) - 1 for p in pieces[1:]), pieces
    ctx = llm.context("next question")
    assert llm.backend.count_tokens(ctx) + llm.max_new_tokens <= llm.max_tokens


def _saved_under(tmp_path: Path, tokenizer_id: str) -> tuple[FiniteMemoryLLM, Path]:
    llm = _conversation(backend=Counted(tokenizer_id))
    path = tmp_path / "chat.json"
    llm.save(path)
    return llm, path


def test_an_estimated_checkpoint_is_recounted_on_load(tmp_path: Path) -> None:
    old, path = _saved_under(tmp_path, "fmai-estimate-v1")  # before the tokenizer packages
    llm = FiniteMemoryLLM.load(path, Counted("openai:o200k_base", scale=2))
    assert llm.recounted_from == "fmai-estimate-v1"
    assert [x.text for x in llm.segments()] == [x.text for x in old.segments()]
    assert llm.state.history_tokens > old.state.history_tokens
    _assert_recounted(llm)
    llm.chat("and one more turn")


def test_a_real_tokenizer_change_needs_recount_true(tmp_path: Path) -> None:
    _, path = _saved_under(tmp_path, "hf:model-a")
    with pytest.raises(CheckpointError, match="recount=True"):
        FiniteMemoryLLM.load(path, Counted("hf:model-b", scale=2))
    llm = FiniteMemoryLLM.load(path, Counted("hf:model-b", scale=2), recount=True)
    assert llm.recounted_from == "hf:model-a"
    _assert_recounted(llm)


def test_recount_true_under_the_same_tokenizer_and_the_default_note(tmp_path: Path) -> None:
    old, path = _saved_under(tmp_path, "hf:model-a")
    same = FiniteMemoryLLM.load(path, Counted("hf:model-a"))
    assert same.recounted_from is None
    assert same.state.to_dict() == old.state.to_dict()
    again = FiniteMemoryLLM.load(path, Counted("hf:model-a"), recount=True)
    assert again.recounted_from is None and again.state.to_dict() == old.state.to_dict()


def test_a_hosted_style_backend_gaining_a_real_tokenizer_keeps_its_checkpoints(
    tmp_path: Path,
) -> None:
    from fmai_core.backends import CallableBackend

    def reply(messages: Any) -> str:
        return "noted: " + messages[-1].content

    def exact(text: str) -> int:  # stands in for o200k_base once the packages are installed
        return len(text.split()) * 2

    before = CallableBackend(reply, tokenizer="estimate", name="gpt-4o-mini")
    assert before.tokenizer_id == "fmai-estimate-v1"
    llm = _conversation(backend=before)
    path = tmp_path / "chat.json"
    llm.save(path)
    after = CallableBackend(reply, tokenizer=exact, name="gpt-4o-mini")
    again = FiniteMemoryLLM.load(path, after)
    assert again.recounted_from == "fmai-estimate-v1"
    _assert_recounted(again)
    assert again.chat("still there?").response == "noted: still there?"


# -- defect 11: policy settings persist; save writes outside the conversation's lock --------
def test_a_policys_settings_survive_a_checkpoint(tmp_path: Path) -> None:
    from fmai_core.policies.hybrid import HybridPolicy
    from fmai_core.policies.semantic import SemanticPolicy

    for policy in (
        HybridPolicy(relevance_weight=0.9, keep_recent=3),
        SemanticPolicy(topics=4, min_relevance=0.2),
    ):
        llm = _conversation(policy=policy)
        path = tmp_path / f"{policy.name}.json"
        llm.save(path)
        again = FiniteMemoryLLM.load(path, EchoBackend())
        assert again.policy == policy, again.policy
        assert _doc(path)["settings"]["policy_config"]["min_relevance"] == policy.min_relevance
    other = FiniteMemoryLLM.load(tmp_path / "hybrid.json", EchoBackend(), policy="sliding")
    assert other.policy.name == "sliding"  # an override replaces the saved policy


def test_a_policy_config_the_policy_does_not_take_is_refused(tmp_path: Path) -> None:
    from fmai_core.checkpoint import checksum

    path = tmp_path / "chat.json"
    _conversation(policy="hybrid").save(path)
    doc = _doc(path)
    doc["settings"]["policy_config"]["no_such_field"] = 1
    doc["checksum"] = checksum(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"no_such_field.*policy="):
        FiniteMemoryLLM.load(path, EchoBackend())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("relevance_weight", "0.4"),  # a string for a number
        ("keep_recent", 2.5),  # a fraction for a count
        ("keep_recent", True),  # a bool is not a count
        ("half_life", None),
        ("min_relevance", [0.1]),
    ],
)
def test_a_policy_config_of_the_wrong_type_is_refused(
    tmp_path: Path, field: str, value: Any
) -> None:
    """Defect: a saved policy setting was passed to the policy unchecked, so a checkpoint
    whose `relevance_weight` was a string loaded, and the next turn failed inside the
    policy with a TypeError (or silently mis-scored). It is refused on load, naming the
    setting and what it should be."""
    from fmai_core.checkpoint import checksum

    path = tmp_path / "chat.json"
    _conversation(policy="hybrid").save(path)
    doc = _doc(path)
    doc["settings"]["policy_config"][field] = value
    doc["checksum"] = checksum(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(CheckpointError, match=rf"wrong type.*{field}=.*default is"):
        FiniteMemoryLLM.load(path, EchoBackend())
    # an int where the default is a float is a number all the same
    doc["settings"]["policy_config"][field] = 1 if field != "keep_recent" else 3
    doc["checksum"] = checksum(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert (
        getattr(FiniteMemoryLLM.load(path, EchoBackend()).policy, field)
        == doc["settings"]["policy_config"][field]
    )


def test_save_writes_outside_the_conversations_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    llm = _conversation()
    seen: list[Any] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        done = threading.Event()
        worker = threading.Thread(
            target=lambda: (seen.append(llm.context("while saving")), done.set()), daemon=True
        )
        worker.start()
        seen.append(done.wait(2))  # the conversation is free while the file is synced
        real_fsync(fd)

    monkeypatch.setattr("fmai_core.checkpoint.os.fsync", slow_fsync)
    llm.save(tmp_path / "chat.json")
    assert True in seen and len(seen) >= 2
    assert _content(FiniteMemoryLLM.load(tmp_path / "chat.json", EchoBackend())) == _content(llm)


def test_a_folder_or_an_empty_path_is_named_as_such_on_save_and_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: `save` to a folder (or to "", which is the current folder) failed with "check
    the path, the permissions and the free space" (for "": "Device or resource busy"), and
    `load` of a folder said the checkpoint "may be corrupt: restore a backup". Each now
    says it got a folder and to give a file's path; nothing is written."""
    llm = _conversation()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chats").mkdir()
    for where in (tmp_path / "chats", "", "."):
        with pytest.raises(CheckpointError, match="is a folder, not a file") as info:
            llm.save(where)
        assert "chat.json" in str(info.value)  # an example of what to give
        with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file") as info:
            FiniteMemoryLLM.load(where, EchoBackend())
        assert "restore a backup" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chats"]
    assert list((tmp_path / "chats").iterdir()) == []


@pytest.mark.parametrize(
    "bad", [{"temperature": "hot"}, {"messages": [1]}, {"max_new_tokens": "5"}]
)
def test_a_checkpoint_with_a_generation_setting_no_turn_could_use_is_refused(
    saved: tuple[FiniteMemoryLLM, Path], bad: dict[str, Any]
) -> None:
    # A hand-edited (or another tool's) checkpoint loaded, and then every turn failed.
    from fmai_core.checkpoint import checksum

    llm, path = saved
    doc = _doc(path)
    doc["settings"]["generation"].update(bad)
    doc["checksum"] = checksum(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(CheckpointError, match=f"{path.name} holds a generation setting"):
        FiniteMemoryLLM.load(path, EchoBackend())
    # a generation= override of that setting replaces it: the conversation continues
    name = next(iter(bad))
    fixed = {name: 0.0 if name == "temperature" else None}
    if name == "messages":
        return
    again = FiniteMemoryLLM.load(path, EchoBackend(), generation=fixed)
    assert again.state.to_dict() == llm.state.to_dict()
    assert again.chat("next").response
