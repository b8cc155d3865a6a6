"""Every policy through the real engine: budgets hold and old facts come back."""

from __future__ import annotations

import random

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.policies import POLICY_NAMES
from fmai_core.testing import EchoBackend

FILLER = [
    "The garden needs compost and the tomatoes need water.",
    "The forecast says rain and a storm on the weekend.",
    "I tried a pasta recipe with garlic and basil.",
    "My laptop battery dies fast after the update.",
    "The train to the museum was late again.",
    "Our team lost the match because the coach rested the striker.",
]


def conversation(n: int, fact_at: int) -> list[Message]:
    rng = random.Random(11)
    out: list[Message] = []
    for i in range(n):
        if i == fact_at:
            out += [Message("user", "My sister is called Ada."), Message("assistant", "Noted!")]
        else:
            out += [Message("user", rng.choice(FILLER)), Message("assistant", rng.choice(FILLER))]
    return out


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_budget_holds_turn_after_turn(name: str) -> None:
    backend = EchoBackend()
    llm = FiniteMemoryLLM(
        backend, policy=name, max_tokens=200, max_new_tokens=24, max_policy_ms=None
    )
    rng = random.Random(5)
    for _ in range(40):
        result = llm.chat(rng.choice(FILLER))
        assert result.stats.prompt_tokens + 24 <= 200
        assert not result.stats.fallback
        assert result.stats.policy_stats.get("signal", "none") in {"none", "proxy", "model"}


@pytest.mark.parametrize("name", ["importance", "semantic", "rolling_summary", "hybrid"])
def test_a_fact_300_messages_back_reaches_the_prompt(name: str) -> None:
    llm = FiniteMemoryLLM(
        EchoBackend(), policy=name, max_tokens=400, max_new_tokens=32, max_policy_ms=None
    )
    llm.extend(conversation(150, fact_at=2))
    llm.chat("Let's talk about something else.")
    prompt = llm.context("What is my sister's name?")
    assert any("My sister is called Ada." in m.content for m in prompt)


def test_sliding_forgets_it() -> None:
    llm = FiniteMemoryLLM(
        EchoBackend(), policy="sliding", max_tokens=400, max_new_tokens=32, max_policy_ms=None
    )
    llm.extend(conversation(150, fact_at=2))
    prompt = llm.context("What is my sister's name?")
    assert not any("Ada" in m.content for m in prompt)


class HallucinatingSummarizer(EchoBackend):
    """An EchoBackend whose summaries invent a name."""

    def summarize(self, text: str, max_tokens: int) -> str:
        return "The user's sister is called Eve."


def test_a_hallucinated_summary_never_reaches_the_prompt() -> None:
    llm = FiniteMemoryLLM(
        HallucinatingSummarizer(),
        policy="rolling_summary",
        max_tokens=300,
        max_new_tokens=32,
        max_policy_ms=None,
    )
    llm.extend(conversation(60, fact_at=1))
    result = llm.chat("Anything new?")
    assert result.stats.evicted
    assert result.stats.policy_stats["gate"] == "failed"
    assert "Eve" in result.stats.policy_stats["unsupported"]
    system = llm.context("hello")[0]
    assert system.role == "system"
    assert "Eve" not in system.content
    assert "My sister is called Ada." in system.content  # the extractive summary kept the fact
