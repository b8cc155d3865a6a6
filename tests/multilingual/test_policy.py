"""MultilingualPolicy: delegation, anchors, exact budget, and use in the engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmai_core import FiniteMemoryLLM, Segment
from fmai_core.backend import SentenceSplitter
from fmai_core.errors import UnknownPolicyError
from fmai_core.policies import get_policy
from fmai_core.policies.base import Policy, PolicyRequest, Selection, enforce_budget
from fmai_core.policies.scored import WrapperPolicy
from fmai_core.testing import EchoBackend
from fmai_multilingual import MultilingualPolicy
from fmai_multilingual.policy import split_at_script_switches


@dataclass(frozen=True)
class Greedy(Policy):
    """A deliberately broken base policy: keeps everything and writes a summary."""

    name: ClassVar[str] = "greedy"

    def select(self, request: PolicyRequest) -> Selection:
        return Selection(keep=tuple(s.id for s in request.candidates), summary="a b c d")


def _segments(sizes: list[int]) -> tuple[Segment, ...]:
    return tuple(Segment(i, i, "user", f"s{i}", n) for i, n in enumerate(sizes))


def test_is_a_policy_and_a_sentence_splitter() -> None:
    policy = MultilingualPolicy()
    assert isinstance(policy, Policy)
    assert isinstance(policy, SentenceSplitter)
    assert policy.base.name == "hybrid"
    assert policy.recalls == policy.base.recalls
    assert MultilingualPolicy("sliding").recalls is False


def test_unknown_base_is_a_clear_error() -> None:
    with pytest.raises(UnknownPolicyError):
        MultilingualPolicy("nope")


def test_delegates_to_the_base() -> None:
    request = PolicyRequest("evict", _segments([5, 5, 5, 5]), budget=10)
    chosen = MultilingualPolicy("sliding").select(request)
    assert set(chosen.keep) == {2, 3}
    assert chosen.stats["base"] == "sliding"
    assert MultilingualPolicy("sliding").name == "multilingual:sliding"
    assert isinstance(MultilingualPolicy(), WrapperPolicy)


def test_the_planner_holds_an_over_budget_base_to_its_budget() -> None:
    # The wrapper does not trim: the planner's contract (enforce_budget) does, for every policy.
    request = PolicyRequest("evict", _segments([4, 4, 4, 4]), budget=10)
    raw = MultilingualPolicy(Greedy()).select(request)
    assert raw.keep == (0, 1, 2, 3)
    chosen = enforce_budget(request, raw)
    # The summary costs 4 (default count: words); 4 + 4 + 4 > 10, so drop oldest until fit.
    assert chosen.keep == (3,)
    assert chosen.summary == "a b c d"
    assert chosen.stats["trimmed"] == 3 and chosen.stats["base"] == "greedy"
    llm = FiniteMemoryLLM(
        EchoBackend(), policy=MultilingualPolicy(Greedy()), max_tokens=160, max_new_tokens=16,
        max_policy_ms=None,
    )  # fmt: skip
    for i in range(30):
        stats = llm.chat(f"Message number {i} about the weather in town today.").stats
        assert stats.prompt_tokens + 16 <= 160
    assert llm.stats.evictions > 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=25),
    st.integers(min_value=0, max_value=200),
    st.sampled_from(["sliding", "hybrid", "semantic", "importance"]),
)
def test_never_exceeds_the_budget(sizes: list[int], budget: int, base: str) -> None:
    request = PolicyRequest("recall", _segments(sizes), budget=budget, query="s1 s2")
    chosen = MultilingualPolicy(base).select(request)
    kept = sum(s.tokens for s in request.candidates if s.id in chosen.keep)
    summary = request.count_text(chosen.summary) if chosen.summary else 0
    assert kept + summary <= budget


def test_language_switch_is_an_anchor() -> None:
    policy = MultilingualPolicy()
    text = "我明天去北京 but I am not sure when. Дай знать, если сможешь прийти завтра."
    assert policy.split_sentences(text) == [
        "我明天去北京",
        "but I am not sure when.",
        "Дай знать, если сможешь прийти завтра.",
    ]
    assert split_at_script_switches("I love 寿司 so much") == ["I love 寿司 so much"]
    assert split_at_script_switches("今日は Tokyo に行く") == ["今日は Tokyo に行く"]


def test_engine_cuts_long_messages_at_the_policys_anchors() -> None:
    backend = EchoBackend()
    llm = FiniteMemoryLLM(
        backend,
        policy=MultilingualPolicy("sliding"),
        max_tokens=400,
        max_new_tokens=20,
        segment_tokens=40,  # one sentence is 33 EchoBackend tokens
    )
    sentence = "मैं कल सुबह स्टेशन पर तुम्हारा इंतज़ार करूँगा।"
    result = llm.chat(" ".join([sentence] * 6))
    assert result.response.startswith("echo:")
    parts = [s for s in (*llm.state.history, *llm.state.archive) if s.role == "user"]
    assert len(parts) > 1
    assert all(p.text.endswith("।") for p in parts)
    assert backend.count_tokens(llm.context("ठीक है")) + 20 <= 400


@pytest.mark.parametrize("base", ["sliding", "hybrid", "semantic", "rolling_summary"])
def test_a_long_mixed_language_conversation_stays_in_budget(base: str) -> None:
    backend = EchoBackend()
    llm = FiniteMemoryLLM(
        backend, policy=MultilingualPolicy(base), max_tokens=160, max_new_tokens=24
    )
    lines = [
        "my sister's name is Ada and she lives in Boston",
        "我妹妹叫阿达，她住在成都。我们每个周末都打电话。",
        "मेरी बहन का नाम आदा है और वह पुणे में रहती है। हम हर हफ्ते बात करते हैं।",
        "Моя сестра живёт в Казани. Мы созваниваемся каждую неделю.",
        "คืนนี้ว่างไปกินข้าวด้วยกันไหม รถไฟมาช้าอีกแล้ว ช้าไปยี่สิบนาที",
        "¿sabes si va a llover mañana por la tarde?",
    ]
    for turn in range(18):
        result = llm.chat(lines[turn % len(lines)])
        assert result.stats.prompt_tokens + 24 <= 160
        assert result.stats.policy in (f"multilingual:{base}", "sliding")
    assert backend.count_tokens(llm.context("what is my sister's name?")) + 24 <= 160


def test_names_are_registered_and_checkpoints_restore_the_policy(tmp_path: Path) -> None:
    assert isinstance(get_policy("multilingual"), MultilingualPolicy)
    assert get_policy("multilingual").base.name == "hybrid"
    assert get_policy("multilingual:semantic").base.name == "semantic"
    backend = EchoBackend()
    llm = FiniteMemoryLLM(backend, policy=MultilingualPolicy("sliding"), max_tokens=512)
    llm.chat("我妹妹叫阿达。她住在成都。")
    llm.save(tmp_path / "chat.json")
    again = FiniteMemoryLLM.load(tmp_path / "chat.json", backend)
    assert isinstance(again.policy, MultilingualPolicy)
    assert again.policy.name == "multilingual:sliding"
    assert again.context("你好") == llm.context("你好")
