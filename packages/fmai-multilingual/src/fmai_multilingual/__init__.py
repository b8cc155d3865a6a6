"""fmai-multilingual: fmai for every language and script.

- [`detect`][fmai_multilingual.detect]: ISO 639-1 language and ISO 15924 script of a text,
  deterministic, good on chat messages of a few words.
- [`split_sentences`][fmai_multilingual.split_sentences]: sentence anchors in every script.
- [`estimate_tokens`][fmai_multilingual.estimate_tokens]: token counts by script, fitted
  against real tokenizers, for backends without one.
- [`MultilingualPolicy`][fmai_multilingual.MultilingualPolicy]: any memory policy with
  multilingual sentence anchors and an exact budget.
- [`TranslationBridge`][fmai_multilingual.TranslationBridge]: translation through any fmai
  backend, keeping the detected source language.

Example:
    ```python
    from fmai_multilingual import detect, estimate_tokens, split_sentences

    detect("Wie spät ist es?")            # Detection(language='de', script='Latn', ...)
    split_sentences("你好。今天很忙！")        # ['你好。', '今天很忙！']
    estimate_tokens("สวัสดีครับ")              # tokens, as the GPT-4 tokenizer would count
    ```
"""

from __future__ import annotations

from fmai_multilingual.detection import Detection, detect
from fmai_multilingual.policy import MultilingualPolicy, register
from fmai_multilingual.scripts import dominant_script, script_of
from fmai_multilingual.sentences import split_sentences
from fmai_multilingual.tokens import TOKENIZER_FAMILIES, estimate_tokens
from fmai_multilingual.translation import Translation, TranslationBridge

__version__ = "0.1.0"

register()  # "multilingual" and "multilingual:<base>" become policy names

__all__ = [
    "TOKENIZER_FAMILIES",
    "Detection",
    "MultilingualPolicy",
    "Translation",
    "TranslationBridge",
    "__version__",
    "detect",
    "dominant_script",
    "estimate_tokens",
    "script_of",
    "split_sentences",
]
