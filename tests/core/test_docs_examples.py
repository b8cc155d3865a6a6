"""The quickstart's torch-free example prints exactly what the docs say it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.DOTALL)


def test_quickstart_echo_example_output_matches_docs() -> None:
    blocks = _blocks(QUICKSTART.read_text(encoding="utf-8"))
    index = next(i for i, (lang, code) in enumerate(blocks) if "EchoBackend(" in code)
    lang, code = blocks[index]
    out_lang, expected = blocks[index + 1]
    assert (lang, out_lang) == ("python", "text")
    namespace: dict[str, object] = {}
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(code, str(QUICKSTART), "exec"), namespace)
    assert buffer.getvalue() == expected
    # The next block (the exact next prompt) runs too.
    follow = next(c for lang, c in blocks[index + 2 :] if lang == "python")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(follow, str(QUICKSTART), "exec"), namespace)
    assert printed.getvalue().splitlines()[-1] == "user | Where do I live?"
