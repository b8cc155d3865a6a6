"""Shared fixtures: a tiny random Llama model and a word-level tokenizer, built in memory.

Nothing is downloaded. The tokenizer has a ChatML chat template and decodes to text that
encodes back to the same ids, so cross-turn KV reuse is high in these tests as it is with
real models. The model runs in float64 so that computing a prompt in two pieces (cached
prefix + new suffix) or in one gives the same greedy tokens: any difference the tests see is
a cache bug, not rounding.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="fmai-torch tests need torch")
transformers = pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

WORDS = (
    "the a an and or but if then so of to in on at by for with from is are was were be "
    "i you he she it we they my your his her our their me him us them this that these "
    "name names sister brother mother father friend cat dog cats dogs house city paris "
    "rome london berlin tokyo river mountain book books tree red blue green yellow one two "
    "three four five six seven eight nine ten what who where when why how do does did have "
    "has had like likes live lives call called remember tell told say said know think want "
    "hello hi yes no please thanks today tomorrow yesterday morning night time day week "
    "year old new big small good bad happy sad work works play plays read reads write "
    "ada eve bob alice carol dave number numbers favourite color colour food pizza tea "
    "coffee water music song songs train trains car cars bike travel trip summer winter"
).split()
PUNCT = list(".,?!:;'\"-()")
SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
torch.set_num_threads(1)  # tiny models: one thread is fastest, and steady on a busy machine

#: Engine settings of the tests that recall with `hybrid` and a stable layout on the tiny
#: model (each adds its budget); no policy deadline: decisions must not depend on timing.
HYBRID_STABLE = {
    "policy": "hybrid",
    "system_prompt": "you are a good friend .",
    "max_policy_ms": None,
    "recall_layout": "stable",
}

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer() -> object:
    """A word-level tokenizer with ChatML specials and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    roles = ["system", "user", "assistant"]
    vocab = {t: i for i, t in enumerate(SPECIAL + roles + WORDS + PUNCT)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return fast


def build_model(vocab_size: int, seed: int = 0) -> object:
    """A 2-layer random Llama (grouped-query attention), float64, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float64)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_parts() -> tuple[object, object]:
    """(model, tokenizer) shared by the tests (the backends never change the weights)."""
    tokenizer = build_tokenizer()
    return build_model(len(tokenizer)), tokenizer  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, tiny_parts: tuple[object, object]) -> str:
    """The tiny model saved as a Hugging Face folder (for path loading and the CLI)."""
    model, tokenizer = tiny_parts
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(str(path))  # type: ignore[attr-defined]
    tokenizer.save_pretrained(str(path))  # type: ignore[attr-defined]
    return str(path)


@pytest.fixture
def make_backend(tiny_parts: tuple[object, object]):  # type: ignore[no-untyped-def]
    """Build an HFBackend over the shared tiny model: `make_backend(kv_reuse=True)`."""
    from fmai_torch import HFBackend

    model, tokenizer = tiny_parts

    def make(**kwargs: object) -> HFBackend:
        return HFBackend(model, tokenizer=tokenizer, **kwargs)

    return make
