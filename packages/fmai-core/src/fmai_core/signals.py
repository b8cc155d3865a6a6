"""Default model signals built from a plain backend."""

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
