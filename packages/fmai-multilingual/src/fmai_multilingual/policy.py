"""`MultilingualPolicy`: any memory policy, with sentence anchors that fit every script.

The policy wraps a base policy (`"hybrid"` by default) and delegates the choice of segments
to it. What it adds:

- **Sentence anchors for every script.** It implements the core's
  [`SentenceSplitter`][fmai_core.backend.SentenceSplitter] protocol, so the engine cuts long
  messages with [`split_sentences`][fmai_multilingual.split_sentences] (Chinese `。`, Hindi
  `।`, Thai spaces, abbreviations...) instead of the core's Latin-centred default.
- **A language switch is an anchor.** Inside a sentence, a switch of writing system that
  spans at least two words (`"我明天去北京 but I am not sure when"`) is a cut too.
- **The budget stays exact**, as for every policy: the planner cuts any selection over
  `request.budget` ([`enforce_budget`][fmai_core.policies.base.enforce_budget]: the oldest
  kept segments first, and the stats say so in `trimmed`), so the wrapper does not.

Example:
    ```python
    from fmai_core import FiniteMemoryLLM
    from fmai_core.testing import EchoBackend
    from fmai_multilingual import MultilingualPolicy

    llm = FiniteMemoryLLM(EchoBackend(), policy=MultilingualPolicy(base="hybrid"))
    ```
"""

from __future__ import annotations

from functools import partial

from fmai_core.policies import POLICY_NAMES, register_policy
from fmai_core.policies.base import Policy
from fmai_core.policies.scored import WrapperPolicy
from fmai_multilingual.scripts import COMMON, INHERITED, script_runs
from fmai_multilingual.sentences import split_sentences

__all__ = ["PREFIX", "MultilingualPolicy", "register", "split_at_script_switches"]

#: Registered names are `"multilingual"` (base `hybrid`) and this prefix + a base name.
PREFIX = "multilingual:"

# Scripts that alternate inside one language's text and are no switch between each other.
_SAME_TEXT = ({"Hani", "Hira", "Kana"}, {"Hang", "Hani"})
_MIN_WORDS = 2
_UNSPACED = frozenset({"Hani", "Hira", "Kana", "Thai"})
_MIN_UNSPACED_CHARS = 4


class MultilingualPolicy(WrapperPolicy):
    """Wrap a policy with multilingual sentence anchors.

    The base policy chooses the segments; the planner holds every policy's selection to its
    budget ([`enforce_budget`][fmai_core.policies.base.enforce_budget]), this one included.

    Args:
        base: The policy that chooses segments: a registered name (`"hybrid"`, `"sliding"`,
            `"semantic"`, `"importance"`, `"rolling_summary"`) or a `Policy` instance.
        language: ISO 639-1 code of the conversation, if known (selects the abbreviation
            list of the sentence splitter); `None` applies every list.

    Raises:
        UnknownPolicyError: `base` is not a registered policy name.
    """

    prefix = PREFIX

    def __init__(self, base: str | Policy = "hybrid", language: str | None = None) -> None:
        super().__init__(base)
        self.language = language

    def split_sentences(self, text: str) -> list[str]:
        """Sentences of `text` by the rules of its script, cut again at script switches."""
        pieces: list[str] = []
        for sentence in split_sentences(text, self.language):
            pieces.extend(split_at_script_switches(sentence))
        return pieces

    def __repr__(self) -> str:
        return f"MultilingualPolicy(base={self.base.name!r}, language={self.language!r})"


def register() -> None:
    """Register `"multilingual"` and `"multilingual:<base>"` for every built-in base policy.

    Done when `fmai_multilingual` is imported, so the names work wherever a policy name does
    (`FiniteMemoryLLM(backend, policy="multilingual:sliding")`) and checkpoints written with a
    `MultilingualPolicy` load again. The `language` setting is not part of the name.
    """
    register_policy("multilingual", MultilingualPolicy)
    for base in POLICY_NAMES:
        register_policy(f"{PREFIX}{base}", partial(MultilingualPolicy, base))


def split_at_script_switches(sentence: str) -> list[str]:
    """Cut a sentence where the writing system changes for at least two words.

    Example:
        >>> split_at_script_switches("我明天去北京 but I am not sure when")
        ['我明天去北京', 'but I am not sure when']
        >>> split_at_script_switches("I love 寿司 so much")
        ['I love 寿司 so much']
    """
    runs: list[tuple[str, int, int, int]] = []  # (script, start, words, characters)
    position = 0
    for script, run in script_runs(sentence):
        if script not in (COMMON, INHERITED):
            if runs and _same_text(runs[-1][0], script):
                first, start, words, chars = runs[-1]
                runs[-1] = (first, start, words + 1, chars + len(run))
            else:
                runs.append((script, position, 1, len(run)))
        position += len(run)
    # Chinese, Japanese and Thai do not space their words: count their characters instead.
    blocks = [
        (script, start)
        for script, start, words, chars in runs
        if words >= _MIN_WORDS or (script in _UNSPACED and chars >= _MIN_UNSPACED_CHARS)
    ]
    cuts = [b[1] for prev, b in zip(blocks, blocks[1:]) if not _same_text(prev[0], b[0])]
    pieces, start = [], 0
    for cut in cuts:
        piece = sentence[start:cut].strip()
        if piece:
            pieces.append(piece)
            start = cut
    tail = sentence[start:].strip()
    return [*pieces, tail] if tail else pieces


def _same_text(a: str, b: str) -> bool:
    return a == b or any(a in group and b in group for group in _SAME_TEXT)
