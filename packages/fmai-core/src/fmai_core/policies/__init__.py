"""Memory policies and their registry.

Names (contract): `sliding`, `importance`, `semantic`, `rolling_summary`, `hybrid`.
Anywhere a policy name is accepted, a [`Policy`][fmai_core.policies.base.Policy] instance is
accepted too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from fmai_core.errors import UnknownPolicyError
from fmai_core.policies.base import Policy, PolicyRequest, Selection, Signals

__all__ = [
    "POLICY_NAMES",
    "Policy",
    "PolicyRequest",
    "Selection",
    "Signals",
    "get_policy",
    "register_policy",
]

# name -> "module:Class"; imported on first use so `import fmai_core` stays fast.
_BUILTIN: dict[str, str] = {
    "sliding": "fmai_core.policies.sliding:SlidingWindowPolicy",
    "importance": "fmai_core.policies.importance:ImportancePolicy",
    "semantic": "fmai_core.policies.semantic:SemanticPolicy",
    "rolling_summary": "fmai_core.policies.rolling_summary:RollingSummaryPolicy",
    "hybrid": "fmai_core.policies.hybrid:HybridPolicy",
}
_REGISTRY: dict[str, Callable[[], Policy]] = {}

POLICY_NAMES: tuple[str, ...] = tuple(_BUILTIN)


def register_policy(name: str, factory: Callable[[], Policy]) -> None:
    """Make `factory()` available as policy `name` (overrides a built-in of that name)."""
    _REGISTRY[name] = factory


def get_policy(policy: str | Policy) -> Policy:
    """Return a policy instance for a name or pass an instance through.

    Raises:
        UnknownPolicyError: `policy` is not a registered name.
    """
    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, str):
        raise UnknownPolicyError(
            f"A policy must be a name or a Policy instance, got {type(policy).__name__}."
        )
    if policy in _REGISTRY:
        return _REGISTRY[policy]()
    target = _BUILTIN.get(policy)
    if target is None:
        known = ", ".join(sorted({*_BUILTIN, *_REGISTRY}))
        raise UnknownPolicyError(f"Unknown policy {policy!r}: choose one of {known}.")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    instance: Policy = cls()
    return instance
