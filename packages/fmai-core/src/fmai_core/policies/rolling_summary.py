"""`rolling_summary`: fold evicted history into one summary that must stay faithful."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import ClassVar

from fmai_core.fidelity import check_fidelity
from fmai_core.memo import PER_TEXT_BYTES, memo
from fmai_core.policies.base import PolicyRequest, Selection
from fmai_core.policies.scored import RecallingPolicy
from fmai_core.relevance import (
    information,
    newest,
    terms,
)
from fmai_core.segments import Segment
from fmai_core.text import split_sentences

__all__ = ["RollingSummaryPolicy", "extractive_summary", "summary_source"]


def summary_source(previous: str | None, dropped: Sequence[Segment]) -> list[str]:
    """The lines a new summary is written from: the previous summary's, then `role: text`."""
    lines = [line.strip() for line in (previous or "").splitlines() if line.strip()]
    lines += [f"{s.role}: {s.text.strip()}" for s in dropped if s.text.strip()]
    return lines


@memo(PER_TEXT_BYTES)
def _units(line: str) -> tuple[str, ...]:
    """The sentences of one summary line, each with the line's `role:` prefix (memoised)."""
    prefix, sep, body = line.partition(": ")
    if not sep or " " in prefix:
        prefix, body = "", line
    return tuple(f"{prefix}: {s}" if prefix else s for s in split_sentences(body))


def extractive_summary(lines: Sequence[str], budget: int, count_text: Callable[[str], int]) -> str:
    """Pick the most informative sentences of `lines` that fit `budget` tokens.

    Every line is split into sentences; a sentence keeps its line's `role:` prefix. Sentences
    are ranked by [`information`][fmai_core.relevance.information] (rare terms, names,
    numbers, first-person facts), near-duplicates of a chosen sentence are skipped, and the
    chosen ones are written one per line in their original order. Being verbatim, an
    extractive summary always passes the fidelity gate.
    """
    units = list(dict.fromkeys(chain.from_iterable(map(_units, lines))))
    if not units or budget <= 0:
        return ""
    scores = information(units)
    order = sorted(range(len(units)), key=lambda i: (-scores[i], -i))
    chosen: list[int] = []
    seen: list[set[str]] = []
    room = budget
    for i in order:
        if room <= 0:
            break
        cost = count_text(units[i])
        words = set(terms(units[i]))
        if cost > room or any(words and len(words & s) >= 0.8 * len(words) for s in seen):
            continue
        chosen.append(i)
        seen.append(words)
        room -= cost
    chosen.sort()
    text = "\n".join(units[i] for i in chosen)
    while chosen and count_text(text) > budget:  # joining may cost a token or two
        chosen.remove(min(chosen, key=lambda i: (scores[i], -i)))
        text = "\n".join(units[i] for i in chosen)
    return text


@dataclass(frozen=True)
class RollingSummaryPolicy(RecallingPolicy):
    """Keep the newest history and fold what leaves it into a rolling summary.

    `"evict"` mode: the newest segments that fit `budget - summary budget` are kept; the
    older ones, with the previous summary, become the source of a new summary of at most
    `summary_fraction * budget` tokens. With `signals.summarize` the backend writes it, and it
    is kept only if it fits and passes the fidelity gate
    ([`check_fidelity`][fmai_core.fidelity.check_fidelity]: every number, name and quote it
    states is in the source); otherwise, or without a summarizer, an extractive summary (the
    most informative sentences, see
    [`extractive_summary`][fmai_core.policies.rolling_summary.extractive_summary]) is used.

    `"recall"` mode: lexical recall, i.e. archived segments whose relevance to the query
    (BM25 mixed with embedding cosine) exceeds `min_relevance`, best first, within budget;
    text already in the prompt or repeated is not recalled.

    Attributes:
        summary_fraction: Share of the budget the summary may use.
        min_relevance: Relevance a segment needs to be recalled.

    Stats: `signal` (`"model"` when the backend wrote the kept summary, else `"proxy"`),
    `summary` (`"model"`, `"extractive"` or `"unchanged"`), `gate` (`"passed"`, `"failed"`,
    `"over_budget"` or `"not_run"`), `unsupported` (claims the gate rejected), `summary_tokens`,
    `folded` (segments folded into the summary), `kept`, `kept_tokens`.
    """

    name: ClassVar[str] = "rolling_summary"

    summary_fraction: float = 0.3
    min_relevance: float = 0.15

    def prepare(self, segments: Sequence[Segment]) -> None:
        """The proxies' per-text features, and those of the sentences a summary is built from."""
        from fmai_core.relevance import warm

        super().prepare(segments)
        warm(unit for line in summary_source(None, segments) for unit in _units(line))

    def evict(self, request: PolicyRequest) -> Selection:
        """Keep recent history; summarise the rest."""
        candidates = request.candidates
        summary_budget = max(0, int(request.budget * self.summary_fraction))
        kept = newest(candidates, len(candidates), request.budget - summary_budget)
        kept_ids = {s.id for s in kept}
        dropped = [s for s in candidates if s.id not in kept_ids]
        stats: dict[str, object] = {
            "kept": len(kept),
            "kept_tokens": sum(s.tokens for s in kept),
            "folded": len(dropped),
        }
        if not dropped:
            stats.update(signal="none", summary="unchanged", gate="not_run")
            return Selection(keep=tuple(s.id for s in kept), stats=stats)
        previous = request.summary.text if request.summary is not None else None
        lines = summary_source(previous, dropped)
        count = request.count_text
        text: str | None = None
        stats.update(gate="not_run", unsupported=[])
        summarize = request.signals.summarize
        if summarize is not None and summary_budget > 0:
            source = "\n".join(lines)
            draft = summarize(source, summary_budget).strip()
            report = check_fidelity(draft, source)
            if not draft or count(draft) > summary_budget:
                stats["gate"] = "over_budget" if draft else "failed"
            elif not report.passed:
                stats.update(gate="failed", unsupported=list(report.unsupported))
            else:
                text = draft
                stats.update(gate="passed", signal="model", summary="model")
        if text is None:
            text = extractive_summary(lines, summary_budget, count)
            stats.update(signal="proxy", summary="extractive")
        stats["summary_tokens"] = count(text) if text else 0
        return Selection(keep=tuple(s.id for s in kept), summary=text, stats=stats)
