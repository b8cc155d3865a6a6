"""Engine hardening (issue 11): bad text at the door, configuration, concurrency, streams."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.backend import Generation, StreamChunk
from fmai_core.errors import ConfigurationError, InvalidMessageError
from fmai_core.testing import EchoBackend

SURROGATE = b"caf\xe9".decode("utf-8", "surrogateescape")  # 'caf\udce9'


def make(policy: str = "sliding", **kw: Any) -> FiniteMemoryLLM:
    kw.setdefault("max_tokens", 200)
    kw.setdefault("max_new_tokens", 20)
    kw.setdefault("max_policy_ms", None)
    return FiniteMemoryLLM(kw.pop("backend", EchoBackend()), policy, **kw)


# -- defect 1: text that cannot be encoded as UTF-8 ----------------------------------------
def test_message_with_a_lone_surrogate_is_refused() -> None:
    for kwargs in ({"content": SURROGATE}, {"content": "ok", "name": SURROGATE}):
        with pytest.raises(InvalidMessageError, match="errors='replace'"):
            Message("user", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match="errors='replace'"):
        make(system_prompt=SURROGATE)


async def test_lone_surrogate_refused_at_every_door() -> None:
    llm = make()
    llm.chat("hello")
    before = llm.state
    with pytest.raises(InvalidMessageError, match="surrogate"):
        llm.chat(SURROGATE)
    with pytest.raises(InvalidMessageError, match="surrogate"):
        list(llm.stream(SURROGATE))
    with pytest.raises(InvalidMessageError, match="surrogate"):
        await llm.achat(SURROGATE)
    with pytest.raises(InvalidMessageError, match="surrogate"):
        [c async for c in llm.astream(SURROGATE)]
    with pytest.raises(InvalidMessageError, match="surrogate"):
        llm.context(SURROGATE)
    with pytest.raises(InvalidMessageError, match="surrogate"):
        llm.pin(SURROGATE)
    with pytest.raises(InvalidMessageError, match="surrogate"):
        llm.extend([Message("user", SURROGATE)])
    assert llm.state is before


def test_save_works_after_a_refused_surrogate_message(tmp_path: Path) -> None:
    llm = make()
    llm.chat("hello")
    before = llm.state.to_dict()
    with pytest.raises(InvalidMessageError):
        llm.chat(SURROGATE)
    assert llm.state.to_dict() == before
    llm.save(tmp_path / "c.json")
    again = FiniteMemoryLLM.load(tmp_path / "c.json", EchoBackend())
    assert again.state.to_dict() == before
    fixed = SURROGATE.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    assert llm.chat(fixed).response == "echo: caf\ufffd"
    llm.save(tmp_path / "c.json")


class SurrogateReply(EchoBackend):
    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        return Generation(text="bad \ud800 reply")

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        yield StreamChunk("bad \ud800 reply", generation=Generation(text="bad \ud800 reply"))


def test_a_reply_with_a_lone_surrogate_is_stored_replaced(tmp_path: Path) -> None:
    llm = make(backend=SurrogateReply())
    assert llm.chat("hi").response == "bad \ufffd reply"
    list(llm.stream("again"))
    assert all("\ud800" not in s.text for s in llm.state.history)
    llm.save(tmp_path / "c.json")  # never accepted what cannot be saved
    assert asyncio.run(llm.achat("third")).response == "bad \ufffd reply"


# -- defect 6: settings must be finite numbers of the right type ---------------------------
@pytest.mark.parametrize(
    ("setting", "value", "accepted"),
    [
        ("max_policy_ms", float("nan"), "finite number"),
        ("max_policy_ms", float("inf"), "finite number"),
        ("max_policy_ms", "50", "finite number"),
        ("max_policy_ms", True, "finite number"),
        ("max_tokens", True, "int of at least 1"),
        ("max_tokens", 200.0, "int of at least 1"),
        ("max_new_tokens", True, "int of at least 1"),
        ("archive_limit", -1, "int of at least 0"),
        ("archive_limit", 1.5, "int of at least 0"),
        ("segment_tokens", "64", "int of at least 8"),
        ("segment_tokens", True, "int of at least 8"),
        ("low_water", float("nan"), "low_water must be"),
        ("low_water", "0.5", "low_water must be"),
        ("recall_fraction", "0.2", "recall_fraction must be"),
        ("recall_fraction", float("nan"), "recall_fraction must be"),
    ],
)
def test_bad_settings_raise_configuration_error(setting: str, value: Any, accepted: str) -> None:
    with pytest.raises(ConfigurationError, match=accepted):
        make(**{setting: value})


@pytest.mark.parametrize("value", [-5, 0, True, 3.5, "5"])
async def test_bad_max_new_tokens_per_turn_raise_configuration_error(value: Any) -> None:
    llm = make()
    with pytest.raises(ConfigurationError, match="max_new_tokens must be an int of at least 1"):
        llm.chat("hi", max_new_tokens=value)
    with pytest.raises(ConfigurationError, match="max_new_tokens"):
        list(llm.stream("hi", max_new_tokens=value))
    with pytest.raises(ConfigurationError, match="max_new_tokens"):
        await llm.achat("hi", max_new_tokens=value)
    with pytest.raises(ConfigurationError, match="max_new_tokens"):
        [c async for c in llm.astream("hi", max_new_tokens=value)]
    assert llm.state.history == ()
    assert llm.chat("hi", max_new_tokens=3).stats.completion_tokens <= 3
    assert llm.chat("hi", max_new_tokens=None).response == "echo: hi"  # None: the default


def test_evicting_turns_work_at_the_largest_finite_deadline() -> None:
    llm = make("hybrid", max_tokens=80, max_new_tokens=10, max_policy_ms=1e9)
    stats = [llm.chat(f"message {i} with some words").stats for i in range(12)]
    assert any(s.evicted for s in stats) and not any(s.fallback for s in stats)
