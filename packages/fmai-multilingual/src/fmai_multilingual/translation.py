"""`TranslationBridge`: translation through any fmai backend.

The bridge asks a backend (any [`Backend`][fmai_core.backend.Backend]: a hosted API, a local
model, a test backend) to translate, with a short instruction prompt at temperature 0, and
keeps the detected source language next to the result. Text already in the target language
is returned as is, without a call.

The bridge is also a backend itself: `bridge.generate(messages)` translates the last user
message into the target language, lets the wrapped backend answer in that language, and
translates the reply back into the user's language. Use it to serve a model that is only
good in English to users writing in other languages.

Example:
    ```python
    from fmai_core.testing import EchoBackend
    from fmai_multilingual import TranslationBridge

    bridge = TranslationBridge(EchoBackend(reply=lambda messages: "Where is the station?"))
    t = bridge.translate("¿Dónde está la estación?")
    t.text, t.source_language, t.target   # ('Where is the station?', 'es', 'en')
    ```
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fmai_core.backend import Backend, Generation, StreamChunk
from fmai_core.errors import ConfigurationError
from fmai_core.messages import Message
from fmai_multilingual.detection import UNDETERMINED, detect
from fmai_multilingual.tokens import estimate_tokens

__all__ = ["LANGUAGE_NAMES", "Translation", "TranslationBridge"]

#: English names used in the translation prompt (other codes are passed as they are).
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
    "pt": "Portuguese", "nl": "Dutch", "sv": "Swedish", "pl": "Polish", "cs": "Czech",
    "ro": "Romanian", "hu": "Hungarian", "fi": "Finnish", "tr": "Turkish", "vi": "Vietnamese",
    "id": "Indonesian", "ru": "Russian", "uk": "Ukrainian", "bg": "Bulgarian", "el": "Greek",
    "ar": "Arabic", "fa": "Persian", "he": "Hebrew", "hi": "Hindi", "bn": "Bengali",
    "ta": "Tamil", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "th": "Thai",
    "ka": "Georgian", "hy": "Armenian", "ur": "Urdu", "da": "Danish", "no": "Norwegian",
}  # fmt: skip

_PROMPT = (
    "You are a translator. Translate the user's message from {source} into {target}. "
    "Reply with the translation only: no notes, no quotes. Keep names, numbers, code and "
    "formatting unchanged."
)


@dataclass(frozen=True, slots=True)
class Translation:
    """A translated text and where it came from.

    Attributes:
        text: The translation (the original text when `translated` is false).
        source_language: ISO 639-1 code detected in the original (`"und"` if unknown).
        target: ISO 639-1 code of the translation.
        translated: Whether the backend was asked (false when already in `target`).
        original: The text before translation.
    """

    text: str
    source_language: str
    target: str
    translated: bool
    original: str


def _name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


class TranslationBridge:
    """Translate through an fmai backend; also a backend that talks to users in their language.

    Args:
        backend: Any fmai backend; it does the translating (and the answering, when the
            bridge is used as a backend).
        target: ISO 639-1 code of the language to translate into (the language the
            wrapped model works in).
        max_new_tokens: Cap on a translation's length; by default three times the estimated
            tokens of the source plus 16.

    Raises:
        ConfigurationError: `target` is not a two-letter code.
    """

    def __init__(self, backend: Backend, target: str = "en", max_new_tokens: int | None = None):
        if not (isinstance(target, str) and len(target) == 2 and target.isalpha()):
            raise ConfigurationError(
                f"target must be an ISO 639-1 code such as 'en' or 'de', got {target!r}."
            )
        self.backend = backend
        self.target = target.lower()
        self.max_new_tokens = max_new_tokens
        self.name = f"translate[{self.target}]({getattr(backend, 'name', 'backend')})"
        self.tokenizer_id = str(getattr(backend, "tokenizer_id", "unknown"))

    # -- translation ----------------------------------------------------------------------
    def translate(
        self, text: str, target: str | None = None, source: str | None = None
    ) -> Translation:
        """Translate `text` into `target` (the bridge's target by default).

        Args:
            text: The text to translate.
            target: ISO 639-1 code to translate into.
            source: ISO 639-1 code of `text`, if known; detected otherwise.

        Returns:
            A [`Translation`][fmai_multilingual.translation.Translation]; no backend call
            when the text is blank, has no letters, or is already in `target`.
        """
        goal = (target or self.target).lower()
        language = source or detect(text).language
        if not text.strip() or language in (goal, UNDETERMINED):
            return Translation(text, language, goal, False, text)
        limit = self.max_new_tokens or 3 * estimate_tokens(text) + 16
        messages = [
            Message("system", _PROMPT.format(source=_name(language), target=_name(goal))),
            Message("user", text),
        ]
        generation = self.backend.generate(messages, max_new_tokens=limit, temperature=0.0)
        return Translation(generation.text.strip(), language, goal, True, text)

    # -- the Backend protocol: translate in, answer, translate back -------------------------
    def count_tokens(self, messages: Sequence[Message]) -> int:
        """The wrapped backend's count (of the messages as given, before translation)."""
        return self.backend.count_tokens(messages)

    def generate(self, messages: Sequence[Message], **params: Any) -> Generation:
        """Answer in the user's language through a model working in the target language.

        The last user message is translated into the target language; the wrapped backend
        answers; the answer is translated back into the language of that user message. The
        returned generation's `extra["translation"]` says what was translated.
        """
        turn = [*messages]
        index = next((i for i in range(len(turn) - 1, -1, -1) if turn[i].role == "user"), None)
        incoming = None
        if index is not None:
            incoming = self.translate(turn[index].content)
            turn[index] = Message("user", incoming.text)
        generation = self.backend.generate(turn, **params)
        if incoming is None or not incoming.translated:
            return generation
        back = self.translate(generation.text, target=incoming.source_language, source=self.target)
        extra = {
            **generation.extra,
            "translation": {"user_language": incoming.source_language, "via": self.target},
        }
        return replace(generation, text=back.text, extra=extra)

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[StreamChunk]:
        """Like `generate`; the reply arrives in one piece (it must be translated whole)."""
        generation = self.generate(messages, **params)
        yield StreamChunk(generation.text)
        yield StreamChunk("", generation=generation)

    def __repr__(self) -> str:
        return f"TranslationBridge({self.backend!r}, target={self.target!r})"
