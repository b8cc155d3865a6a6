"""The turn-hook protocol and the helper that calls hooks without letting them break a turn."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from fmai_core.stats import TurnStats

__all__ = ["TurnHook", "call_hooks", "logger"]

logger = logging.getLogger("fmai")


@runtime_checkable
class TurnHook(Protocol):
    """Something that observes completed turns.

    Any object with an `on_turn` method is a hook; it need not inherit from this class.
    Evictions and fallbacks are reported through the same call: see
    `TurnStats.evicted`, `TurnStats.evicted_tokens` and `TurnStats.fallback`.

    Example:
        ```python
        class PrintHook:
            def on_turn(self, stats: TurnStats) -> None:
                print(stats.turn, stats.prompt_tokens, stats.latency_ms)
        ```
    """

    def on_turn(self, stats: TurnStats) -> None:
        """Observe one completed turn. Keep it quick: it runs on the turn's thread (for
        `achat`/`astream`, a worker thread, off the event loop)."""
        ...


def call_hooks(hooks: Iterable[TurnHook], stats: TurnStats) -> int:
    """Call `hook.on_turn(stats)` for every hook, in order; never raise for a hook's error.

    A hook that raises an `Exception` is logged with its traceback on the `"fmai"` logger
    (level `ERROR`) and the remaining hooks are still called. `BaseException`s such as
    `KeyboardInterrupt` are not caught.

    Args:
        hooks: The hooks to call.
        stats: The figures of the turn that just completed.

    Returns:
        The number of hooks that raised.
    """
    failures = 0
    for hook in hooks:
        try:
            hook.on_turn(stats)
        except Exception:
            failures += 1
            logger.exception(
                "Telemetry hook %r raised on turn %d; the turn is unaffected. "
                "Fix the hook or remove it from FiniteMemoryLLM(hooks=...).",
                hook,
                stats.turn,
            )
    return failures
