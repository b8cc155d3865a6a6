"""TranslationBridge over EchoBackend."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fmai_core import FiniteMemoryLLM, Message
from fmai_core.errors import ConfigurationError
from fmai_core.testing import EchoBackend
from fmai_multilingual import Translation, TranslationBridge

# A toy "translator": the backend's reply depends on the system prompt's target language.
DICTIONARY = {
    ("¿Dónde está la estación de tren?", "English"): "Where is the train station?",
    ("The station is two streets away.", "Spanish"): "La estación está a dos calles.",
}


def translator(messages: Sequence[Message]) -> str:
    """Translate with DICTIONARY when asked to; otherwise answer (in English)."""
    system, user = messages[0].content, messages[-1].content
    if messages[0].role != "system" or " into " not in system:
        return "The station is two streets away."
    target = system.split(" into ")[1].split(".")[0]
    return DICTIONARY[(user, target)]


def test_translates_and_keeps_the_source_language() -> None:
    backend = EchoBackend(reply=translator)
    bridge = TranslationBridge(backend, target="en")
    result = bridge.translate("¿Dónde está la estación de tren?")
    assert result == Translation(
        "Where is the train station?", "es", "en", True, "¿Dónde está la estación de tren?"
    )
    prompt = backend.calls[-1]
    assert prompt[0].role == "system"
    assert "from Spanish into English" in prompt[0].content


def test_skips_text_already_in_the_target_language() -> None:
    backend = EchoBackend(reply=translator)
    result = TranslationBridge(backend).translate("Where is the train station, please?")
    assert result.translated is False
    assert result.text == result.original
    assert result.source_language == "en"
    assert backend.calls == []


def test_skips_text_without_letters() -> None:
    backend = EchoBackend(reply=translator)
    assert TranslationBridge(backend).translate("12:30 👍").translated is False
    assert backend.calls == []


def test_bad_target_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="ISO 639-1"):
        TranslationBridge(EchoBackend(), target="english")


def test_as_a_backend_it_answers_in_the_users_language() -> None:
    inner = EchoBackend(reply=translator)
    bridge = TranslationBridge(inner, target="en")
    gen = bridge.generate([Message("user", "¿Dónde está la estación de tren?")])
    assert gen.text == "La estación está a dos calles."
    assert gen.extra["translation"] == {"user_language": "es", "via": "en"}
    # Three calls: translate in, answer in English, translate back.
    assert len(inner.calls) == 3
    assert inner.calls[1][-1].content == "Where is the train station?"


def test_in_the_engine() -> None:
    inner = EchoBackend(reply=translator)
    llm = FiniteMemoryLLM(
        TranslationBridge(inner), policy="sliding", max_tokens=256, max_new_tokens=32
    )
    chunks = list(llm.stream("¿Dónde está la estación de tren?"))
    assert "".join(c for c in chunks if isinstance(c, str)) == "La estación está a dos calles."
