"""Cooperative deadlines for memory policies.

`FiniteMemoryLLM(max_policy_ms=...)` gives each policy call a deadline. The engine runs the
call in a worker thread and stops waiting at the deadline, but a thread cannot be killed: a
CPU-bound policy that runs on would hold the GIL and slow every other conversation in the
process. So the deadline is also passed in: `PolicyRequest.deadline` holds it, and while a
call runs it is set for the worker thread, where [`tick`][fmai_core.deadline.tick] reads
it. The built-in policies call `tick()` in their loops (scoring, clustering, the knapsack,
recall) and stop with [`PolicyTimeout`][fmai_core.deadline.PolicyTimeout] soon after the
deadline. A custom policy should do the same: call `tick()` (or
[`check_deadline`][fmai_core.deadline.check_deadline] with its request) every few
milliseconds of work. A result that arrives after the deadline counts as a miss either way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fmai_core.policy_api import PolicyRequest

__all__ = ["PolicyTimeout", "check_deadline", "deadline_scope", "tick"]

_local = threading.local()


class PolicyTimeout(Exception):
    """A policy stopped because its deadline passed."""


def tick() -> None:
    """Raise [`PolicyTimeout`][fmai_core.deadline.PolicyTimeout] if this thread's deadline passed.

    Costs about 0.1 µs; a no-op outside a policy call with a deadline.
    """
    deadline: float | None = getattr(_local, "deadline", None)
    if deadline is not None and time.perf_counter() > deadline:
        raise PolicyTimeout("the policy ran past its deadline (max_policy_ms)")


def check_deadline(request: PolicyRequest) -> None:
    """Raise [`PolicyTimeout`][fmai_core.deadline.PolicyTimeout] past `request.deadline`."""
    if request.deadline is not None and time.perf_counter() > request.deadline:
        raise PolicyTimeout("the policy ran past its deadline (max_policy_ms)")
    tick()


@contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Set this thread's deadline (a `time.perf_counter()` value) for the block."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = deadline
    try:
        yield
    finally:
        _local.deadline = previous
