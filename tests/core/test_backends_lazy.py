"""`fmai_core.backends` loads no SDK until a hosted backend is built; missing extras are named."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_backends_loads_no_sdk() -> None:
    code = (
        "import sys, fmai_core.backends as b\n"
        "assert b.CallableBackend is not None\n"
        "heavy = ['openai', 'anthropic', 'httpx', 'httpx2', 'tiktoken', 'tokenizers']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    assert _run(code) == "[]"


def test_missing_sdk_names_the_extra() -> None:
    # A fresh interpreter where the SDKs cannot be imported (None in sys.modules blocks them).
    code = (
        "import sys\n"
        "sys.modules['openai'] = None; sys.modules['anthropic'] = None\n"
        "from fmai_core.errors import MissingDependencyError\n"
        "from fmai_core.backends import OpenAIBackend, AnthropicBackend\n"
        "for cls in (OpenAIBackend, AnthropicBackend):\n"
        "    try:\n"
        "        cls('m', api_key='k')\n"
        "    except MissingDependencyError as e:\n"
        "        print(e)\n"
    )
    lines = _run(code).splitlines()
    assert "pip install 'fmai-core[openai]'" in lines[0]
    assert "pip install 'fmai-core[anthropic]'" in lines[1]


def test_unknown_attribute_is_an_attribute_error() -> None:
    code = (
        "import fmai_core.backends as b\n"
        "try:\n"
        "    b.NoSuchBackend\n"
        "except AttributeError as e:\n"
        "    print('AttributeError')\n"
    )
    assert _run(code) == "AttributeError"
