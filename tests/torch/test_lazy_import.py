"""`import fmai_torch` and `fmai --help` stay fast: torch loads only when a model is used."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_import_does_not_load_torch() -> None:
    loaded = _modules_after("import fmai_torch")
    assert "torch" not in loaded
    assert "transformers" not in loaded


def test_cli_help_does_not_load_torch() -> None:
    code = (
        "import contextlib, io\n"
        "from fmai_torch import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass"
    )
    assert "torch" not in _modules_after(code)


def test_names_resolve_on_first_use() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import fmai_torch; print(fmai_torch.HFBackend.__name__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "HFBackend"
