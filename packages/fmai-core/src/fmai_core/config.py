"""`MemoryConfig`: a conversation's memory settings, defined and validated in one place.

The engine, the planner and checkpoints all read their settings from one frozen
`MemoryConfig`. [`FiniteMemoryLLM`][fmai_core.engine.FiniteMemoryLLM] builds it from its
keyword arguments (or takes one as `config=`), the planner plans under it, and a checkpoint
stores [`to_dict`][fmai_core.config.MemoryConfig.to_dict] and rebuilds it with
[`from_dict`][fmai_core.config.MemoryConfig.from_dict]. Building one validates every
setting, so an invalid configuration never exists.

Example:
    ```python
    from dataclasses import replace

    from fmai_core import FiniteMemoryLLM, MemoryConfig
    from fmai_core.testing import EchoBackend

    config = MemoryConfig(max_tokens=512, max_new_tokens=64, system_prompt="Be brief.")
    llm = FiniteMemoryLLM(EchoBackend(), policy="sliding", config=config)
    wider = replace(config, max_tokens=1024)  # validated again
    assert llm.config.max_tokens == 512 and wider.max_tokens == 1024
    ```
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from fmai_core.errors import BudgetError, ConfigurationError
from fmai_core.messages import check_encodable

__all__ = ["MemoryConfig"]


def _check_int(name: str, value: object, least: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(
            f"{name} must be an int of at least {least}{extra}, got {value!r}."
        )


#: The `recall_layout` settings (see `MemoryConfig`).
RECALL_LAYOUTS = ("fresh", "stable")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class MemoryConfig:
    """The memory settings of one conversation (immutable; validated when built).

    Attributes:
        max_tokens: Hard limit: prompt tokens + `max_new_tokens` never exceed it.
        max_new_tokens: Tokens reserved for (and the most generated in) each reply.
        system_prompt: Pinned at the top of every prompt; never dropped. `""` is `None`.
        max_policy_ms: Latency budget of the policy per call; past it the policy is
            abandoned and `sliding` used. `None` disables it.
        low_water: After an eviction, history fills at most this share of its budget.
        recall_fraction: Share of the free budget reserved for recalled segments; `None`
            splits it by the query (see
            [`Planner.recall_share`][fmai_core.planner.Planner.recall_share]).
        segment_tokens: Messages longer than this are split into sentence-aligned parts.
        archive_limit: Most segments kept in the archive (`None`: unbounded).
        recall_layout: Where a turn's recalled segments stay. `"fresh"` (the default): in
            that turn's user message only; the next prompt shows that message without them,
            so a KV or prompt cache holds nothing after it. `"stable"`: the recalled block
            stays with the user message it was shown with, as the model saw it, while that
            message is in the history, and later turns add only what they recall that is
            not shown yet (a shown segment the recall picks stays where it is), so the
            prompt stays append-only between evictions (see the KV cache page).

    Raises:
        ConfigurationError: a setting has the wrong type or is out of range.
        BudgetError: `max_new_tokens` leaves no room under `max_tokens`.
        InvalidMessageError: the system prompt holds a lone surrogate.
    """

    max_tokens: int = 2048
    max_new_tokens: int = 256
    system_prompt: str | None = None
    max_policy_ms: float | None = 200.0
    low_water: float = 0.6
    recall_fraction: float | None = None
    segment_tokens: int = 64
    archive_limit: int | None = 10_000
    recall_layout: str = "fresh"

    def __post_init__(self) -> None:
        for name, least in (("max_tokens", 1), ("max_new_tokens", 1), ("segment_tokens", 8)):
            _check_int(name, getattr(self, name), least)
        if self.archive_limit is not None:
            _check_int("archive_limit", self.archive_limit, 0, " (or None: unbounded)")
        for name in ("low_water", "recall_fraction"):
            number = getattr(self, name)
            if number is not None and not _finite(number):
                raise ConfigurationError(f"{name} must be a finite number, got {number!r}.")
        ms = self.max_policy_ms
        if ms is not None and not (_finite(ms) and ms > 0):
            raise ConfigurationError(
                "max_policy_ms must be a finite number of milliseconds above 0, or None for no "
                f"deadline; got {ms!r}."
            )
        if self.max_new_tokens >= self.max_tokens:
            raise BudgetError(
                f"max_new_tokens ({self.max_new_tokens}) must be below max_tokens "
                f"({self.max_tokens}): lower max_new_tokens or raise max_tokens."
            )
        if not 0.0 < self.low_water <= 1.0:
            raise ConfigurationError(f"low_water must be in (0, 1], got {self.low_water!r}.")
        fraction = self.recall_fraction
        if fraction is not None and not 0.0 <= fraction < 1.0:
            raise ConfigurationError(
                f"recall_fraction must be in [0, 1), or None to split by the query, got "
                f"{fraction!r}."
            )
        if self.recall_layout not in RECALL_LAYOUTS:
            raise ConfigurationError(
                f"recall_layout must be one of {', '.join(RECALL_LAYOUTS)}, got "
                f"{self.recall_layout!r}."
            )
        prompt = self.system_prompt
        if prompt is not None and not isinstance(prompt, str):
            raise ConfigurationError("system_prompt must be a str or None.")
        if prompt is not None:
            check_encodable(prompt, "The system prompt")
        if prompt == "":
            object.__setattr__(self, "system_prompt", None)

    @property
    def room(self) -> int:
        """Tokens left for the prompt: `max_tokens - max_new_tokens`."""
        return self.max_tokens - self.max_new_tokens

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (what a checkpoint stores)."""
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, in order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemoryConfig:
        """Build (and validate) a configuration from `to_dict`'s output.

        Missing settings take their defaults.

        Raises:
            ConfigurationError: an unknown or invalid setting.
        """
        unknown = sorted(set(data) - set(cls.names()))
        if unknown:
            raise ConfigurationError(
                f"Unknown memory settings {', '.join(unknown)}; the settings are "
                f"{', '.join(cls.names())}."
            )
        return cls(**data)
