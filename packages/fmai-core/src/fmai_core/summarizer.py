"""Summaries from any backend: the summarizer the engine uses when nothing better is given.

`FiniteMemoryLLM` gives the `rolling_summary` policy (and `hybrid`) a summarizer in this
order: the `summarizer=` argument, the backend's own `summarize` (a
[`Summarizer`][fmai_core.backend.Summarizer], e.g. fmai-torch's model signals), else
[`backend_summarizer`][fmai_core.summarizer.backend_summarizer], which asks the backend to
generate a summary with [`SUMMARY_PROMPT`][fmai_core.summarizer.SUMMARY_PROMPT].
"""

from __future__ import annotations

from fmai_core.backend import Backend
from fmai_core.messages import Message
from fmai_core.policies.base import SummarizeFn

__all__ = ["SUMMARY_PROMPT", "backend_summarizer"]

SUMMARY_PROMPT = (
    "Summarize the conversation excerpt below in a few short sentences. Keep every name, "
    "number, date and place exactly as written. Do not add anything that is not in it."
)


def backend_summarizer(backend: Backend) -> SummarizeFn:
    """Return `summarize(text, max_tokens)` that asks `backend.generate` for a summary.

    The policy that calls it (`rolling_summary`) checks the summary with a fidelity gate
    before keeping it.
    """

    def summarize(text: str, max_tokens: int) -> str:
        messages = [Message("system", SUMMARY_PROMPT), Message("user", text)]
        return backend.generate(messages, max_new_tokens=max_tokens, temperature=0.0).text

    return summarize
