"""Checkpoints: versioned JSON, written atomically, validated on load.

A checkpoint holds the memory state (pinned facts, summary, history and archive), the
engine's settings and the cumulative stats. It never holds backend objects or secrets (API
keys stay in the backend) and nothing executable: it is plain JSON.

Example:
    ```python
    llm.save("chat.json")
    llm2 = FiniteMemoryLLM.load("chat.json", backend)
    ```
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import fields
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmai_core.errors import CheckpointError, FMAIError
from fmai_core.memory import MemoryState
from fmai_core.stats import MemoryStats

if TYPE_CHECKING:
    from fmai_core.backend import Backend
    from fmai_core.engine import FiniteMemoryLLM

__all__ = ["FORMAT", "VERSION", "load_checkpoint", "save_checkpoint"]

FORMAT = "fmai-checkpoint"
VERSION = 1


def _settings(llm: FiniteMemoryLLM) -> dict[str, Any]:
    p = llm._planner
    return {
        "policy": llm.policy.name,
        "max_tokens": llm.max_tokens,
        "max_new_tokens": llm.max_new_tokens,
        "system_prompt": llm.system_prompt,
        "max_policy_ms": p.max_policy_ms,
        "low_water": p.low_water,
        "recall_fraction": p.recall_fraction,
        "segment_tokens": llm.segment_tokens,
        "archive_limit": p.archive_limit,
        "generation": {k: v for k, v in llm.generation.items() if _jsonable(v)},
    }


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def write_atomic(path: Path, data: str) -> None:
    """Write `data` to `path` via a temp file, fsync and rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(llm: FiniteMemoryLLM, path: str | PathLike[str]) -> None:
    """Write `llm`'s conversation to `path` atomically."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer_id": llm.backend.tokenizer_id,
        "backend": getattr(llm.backend, "name", type(llm.backend).__name__),
        "settings": _settings(llm),
        "state": llm.state.to_dict(),
        "stats": {f.name: getattr(llm._stats, f.name) for f in fields(MemoryStats)},
    }
    write_atomic(Path(path), json.dumps(doc, ensure_ascii=False, indent=1))


def load_checkpoint(
    cls: type[FiniteMemoryLLM], path: str | PathLike[str], backend: Backend, **overrides: Any
) -> FiniteMemoryLLM:
    """Restore a conversation; `overrides` replace saved settings (e.g. `policy=`)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"No checkpoint at {p}: check the path.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{p} is not a readable fmai checkpoint ({exc}). It may be corrupt: restore a backup."
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not an fmai checkpoint (no '{FORMAT}' format marker).")
    version = doc.get("version")
    if version != VERSION:
        raise CheckpointError(
            f"{p} has checkpoint version {version!r}; this fmai reads version {VERSION}. "
            "Upgrade fmai to load it."
        )
    saved_tok = doc.get("tokenizer_id")
    if saved_tok != backend.tokenizer_id:
        raise CheckpointError(
            f"{p} was written under tokenizer {saved_tok!r} but the backend uses "
            f"{backend.tokenizer_id!r}; token counts would be wrong. Load it with the same "
            "model, or start a new conversation."
        )
    try:
        settings = dict(doc["settings"])
        generation = settings.pop("generation", {})
        settings.update(overrides)
        state = MemoryState.from_dict(doc["state"])
        stats = MemoryStats(**{k: int(v) for k, v in doc.get("stats", {}).items()})
        llm = cls(backend, **settings, **generation)
    except FMAIError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p} is damaged or incomplete ({exc!r}); restore a backup.") from exc
    llm._check_fixed(state)
    llm._commit(state)
    llm._prepare([*state.history, *state.archive])
    llm._stats = stats
    return llm
