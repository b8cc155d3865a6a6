"""Property-based tests of the engine's hard rules, for every policy."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.errors import BudgetError, MessageTooLongError
from fmai_core.policies import POLICY_NAMES
from fmai_core.testing import EchoBackend

WORDS = [
    "sister",
    "Ada",
    "Oslo",
    "42",
    "blue",
    "cat",
    "train",
    "paid",
    "$3.50",
    "Tuesday",
    "likes",
    "jazz",
    "the",
    "a",
    "is",
    "my",
    "went",
    "to",
    "and",
    ".",
]
text_st = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join)
conversation_st = st.lists(
    st.tuples(st.sampled_from(["user", "assistant"]), text_st), min_size=0, max_size=60
)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _llm(policy: str, max_tokens: int, max_new: int, system: str | None) -> FiniteMemoryLLM:
    return FiniteMemoryLLM(
        EchoBackend(),
        policy,
        max_tokens=max_tokens,
        max_new_tokens=max_new,
        system_prompt=system,
        max_policy_ms=None,
        segment_tokens=16,
    )


@SETTINGS
@given(
    policy=st.sampled_from(POLICY_NAMES),
    conversation=conversation_st,
    max_tokens=st.integers(80, 600),
    max_new=st.integers(1, 60),
    system=st.one_of(st.none(), text_st),
    query=text_st,
)
def test_budget_system_prompt_and_new_message_always_hold(
    policy: str,
    conversation: list[tuple[str, str]],
    max_tokens: int,
    max_new: int,
    system: str | None,
    query: str,
) -> None:
    try:
        llm = _llm(policy, max_tokens, max_new, system)
    except BudgetError:  # a system prompt too large for the budget is refused up front
        return
    llm.extend([Message(r, t) for r, t in conversation])  # type: ignore[arg-type]
    try:
        ctx = llm.context(query)
    except MessageTooLongError:
        assert (
            llm.backend.count_tokens([Message("user", query)]) + max_new
            > max_tokens - (llm.counter.message(system) if system else 0) - 40
        )  # only a message near the whole budget may be refused
        return
    assert llm.backend.count_tokens(ctx) + max_new <= max_tokens
    if system:
        assert ctx[0].role == "system" and ctx[0].content.startswith(system)
    assert ctx[-1].role == "user" and ctx[-1].content.endswith(query)
    # Deterministic: the same inputs give the same context, in a fresh engine too.
    assert llm.context(query) == ctx
    again = _llm(policy, max_tokens, max_new, system)
    again.extend([Message(r, t) for r, t in conversation])  # type: ignore[arg-type]
    assert again.context(query) == ctx


@SETTINGS
@given(
    policy=st.sampled_from(POLICY_NAMES),
    turns=st.lists(text_st, min_size=1, max_size=25),
    max_tokens=st.integers(120, 400),
)
def test_budget_holds_over_live_turns(policy: str, turns: list[str], max_tokens: int) -> None:
    llm = _llm(policy, max_tokens, 16, "Be brief.")
    for text in turns:
        r = llm.chat(text)
        assert r.stats.prompt_tokens + 16 <= max_tokens
        assert llm.backend.calls[-1][0].content.startswith("Be brief.")
    # Nothing is lost: the record holds every message (archive + history).
    assert llm.stats.messages == 2 * len(turns) - sum(
        1 for t in turns if not ("echo: " + t).strip()
    )
