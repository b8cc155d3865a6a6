"""`max_policy_ms` bounds the policy's time: late results are misses, built-ins stop."""

from __future__ import annotations

import threading
import time

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.deadline import PolicyTimeout, check_deadline, deadline_scope, tick
from fmai_core.policies import Policy, PolicyRequest, Selection
from fmai_core.testing import EchoBackend


def _long_chat(policy: str | Policy, max_policy_ms: float | None) -> FiniteMemoryLLM:
    llm = FiniteMemoryLLM(
        EchoBackend(), policy=policy, max_tokens=512, max_new_tokens=16, max_policy_ms=max_policy_ms
    )
    llm.extend(
        Message(
            "user" if i % 2 == 0 else "assistant",
            f"Note {i}: the {i % 13} garden bed has {i} tulips.",
        )
        for i in range(400)
    )
    return llm


def test_a_result_after_the_deadline_is_a_miss() -> None:
    llm = _long_chat("hybrid", 0.001)
    fallbacks = sum(llm.chat(f"How many tulips in bed {i}?").stats.fallback for i in range(20))
    assert fallbacks == 20


def test_tick_raises_only_inside_a_passed_deadline() -> None:
    tick()  # no deadline set: nothing happens
    with deadline_scope(time.perf_counter() - 1), pytest.raises(PolicyTimeout):
        tick()
    with deadline_scope(time.perf_counter() + 60):
        tick()
    request = PolicyRequest("recall", (), 10, deadline=time.perf_counter() - 1)
    with pytest.raises(PolicyTimeout):
        check_deadline(request)


class Blocking(Policy):
    """A custom policy that ignores its deadline until released."""

    name = "blocking"

    def __init__(self) -> None:
        self.release = threading.Event()

    def select(self, request: PolicyRequest) -> Selection:
        self.release.wait(5)
        return Selection(keep=tuple(c.id for c in request.candidates))

    def prepare(self, segments: object) -> None:
        pass


def test_the_turn_does_not_wait_for_a_policy_past_its_budget() -> None:
    policy = Blocking()
    llm = _long_chat(policy, 20)
    try:
        stats = llm.chat("How many tulips?").stats
    finally:
        policy.release.set()
    assert stats.fallback
    assert stats.policy_ms < 1000  # it stopped waiting at the deadline, not at the release


def test_built_in_policies_stop_soon_after_the_deadline() -> None:
    llm = _long_chat("semantic", 0.01)
    for i in range(5):
        assert llm.chat(f"Which bed had {i} tulips?").stats.fallback
    # The abandoned workers noticed their deadline and ended: none keeps the GIL busy.
    end = time.monotonic() + 5
    for worker in [t for t in threading.enumerate() if t.name == "fmai-policy"]:
        worker.join(max(end - time.monotonic(), 0))
    assert not any(t.name == "fmai-policy" for t in threading.enumerate())


def test_fallback_reason_names_no_user_text() -> None:
    class Leaky(Policy):
        name = "leaky"

        def select(self, request: PolicyRequest) -> Selection:
            raise ValueError(f"cannot handle {request.query!r}")

    llm = _long_chat(Leaky(), 200)
    stats = llm.chat("my secret is hunter2").stats
    assert stats.fallback
    assert "hunter2" not in str(stats.policy_stats)
