"""A hook that appends one JSON object per turn to a file."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from fmai_core.stats import TurnStats

__all__ = ["JSONLTurnLog"]


class JSONLTurnLog:
    """Append every turn's [`TurnStats`][fmai_core.stats.TurnStats] to a JSON Lines file.

    Each line is one JSON object holding every `TurnStats` field plus `"timestamp"` (ISO 8601,
    UTC, when the line was written). The line is flushed before `on_turn` returns, so a crash
    loses at most the turn being written. The file is opened for each line, so several
    processes may append to the same log and nothing is left open to close.

    The log only ever sees `TurnStats` (token counts, timings, policy figures), never
    messages, prompts or credentials. Values in `policy_stats` that JSON cannot hold are
    written as their `str()`.

    Args:
        path: The log file; it and its parent folders are created when missing.
        fsync: Also `os.fsync` each line (durable across power loss, slower).

    Example:
        ```python
        log = JSONLTurnLog("logs/turns.jsonl")
        llm = FiniteMemoryLLM(backend, hooks=[log])
        ```
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_turn(self, stats: TurnStats) -> None:
        """Append one line for `stats`."""
        record = stats.to_dict()
        record["timestamp"] = datetime.now(timezone.utc).isoformat()
        line = json.dumps(record, ensure_ascii=False, default=str, allow_nan=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def __repr__(self) -> str:
        return f"JSONLTurnLog({str(self.path)!r})"
