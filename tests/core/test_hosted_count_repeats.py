"""The estimate-mode count never falls under the server's own count, repeated texts included.

A word-count server (tests/core/fakeserver.py: words and punctuation, two template tokens a
message) is the simplest affine server there is. A conversation whose messages repeat (the
same filler, hence the same echoed reply, sent twice) once made a learned per-text count
attribute a report wrongly and count a prompt 24% under the server's (178 against 233
tokens): under-counting is how a prompt goes over the budget, so it must not happen.
"""

from __future__ import annotations

import pytest

pytest.importorskip("openai", reason="needs the OpenAI SDK: pip install 'fmai-core[openai]'")

from fakeserver import FakeProvider

from fmai_core import FiniteMemoryLLM
from fmai_core.backends import OpenAIBackend

FILLER = [
    "The garden needs compost and the tomatoes need water today.",
    "The forecast says rain and a storm on the weekend, so no hike.",
    "I tried a pasta recipe with garlic, lemon and fresh basil.",
    "My laptop battery dies fast after the last system update.",
    "The train to the museum was late again this morning.",
]


@pytest.mark.parametrize("policy", ["semantic", "sliding"])
def test_count_never_under_the_servers_with_repeated_messages(policy: str) -> None:
    with FakeProvider(api_key="sk-count") as provider:
        backend = OpenAIBackend(model="m", base_url=provider.openai_url, api_key="sk-count")
        llm = FiniteMemoryLLM(backend, policy=policy, max_tokens=400, max_new_tokens=40)
        messages = ["My sister is called Ada and she lives in Lisbon."]
        messages += [FILLER[i % len(FILLER)] for i in range(11)]
        messages += ["Where does my sister Ada live?"]
        pairs = []
        for text in messages:
            reply = llm.chat(text)
            assert llm.last_trace is not None
            pairs.append((llm.last_trace.prompt_tokens, reply.stats.prompt_tokens))
        # fmai's count of each prompt against the count the server reported for it
        assert all(ours >= theirs - 1 for ours, theirs in pairs), pairs
        assert all(theirs + 40 <= 400 for _, theirs in pairs), pairs
