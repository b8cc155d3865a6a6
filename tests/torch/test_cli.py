"""The `fmai` command line, driven in-process on the tiny model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="fmai-torch tests need torch")
pytest.importorskip("transformers", reason="fmai-torch tests need transformers")

from fmai_core.stats import TurnStats
from fmai_torch import cli

SCRIPT = "hello , my name is ada .\n\ni live in paris .\nwhat is my name ?\n"


def _run(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(args, out=out)
    return code, out.getvalue()


def test_script_json_reports_every_turn(tiny_dir: str, tmp_path: Path) -> None:
    script = tmp_path / "msgs.txt"
    script.write_text(SCRIPT)
    code, out = _run(
        [
            "chat",
            "--model",
            tiny_dir,
            "--policy",
            "sliding",
            "--max-new-tokens",
            "8",
            "--script",
            str(script),
            "--json",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["turn"] for r in rows] == [0, 1, 2]
    fields = set(TurnStats().to_dict())
    for row in rows:
        assert fields <= set(row) and isinstance(row["response"], str)
    assert rows[0]["reused_tokens"] == 0 and rows[2]["reused_tokens"] > 0


def test_no_kv_reuse_flag(tiny_dir: str, tmp_path: Path) -> None:
    script = tmp_path / "msgs.txt"
    script.write_text(SCRIPT)
    code, out = _run(
        [
            "chat",
            "--model",
            tiny_dir,
            "--policy",
            "sliding",
            "--max-new-tokens",
            "8",
            "--script",
            str(script),
            "--json",
            "--no-kv-reuse",
        ]
    )
    assert code == 0
    assert all(json.loads(line)["reused_tokens"] == 0 for line in out.splitlines())


def test_streaming_script_prints_status_lines(
    tiny_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "msgs.txt"
    script.write_text(SCRIPT)
    code, out = _run(
        [
            "chat",
            "--model",
            tiny_dir,
            "--policy",
            "sliding",
            "--max-new-tokens",
            "6",
            "--script",
            str(script),
            "--system",
            "you are a cat .",
        ]
    )
    assert code == 0
    assert out.count("fmai> ") == 3 and "you> i live in paris ." in out
    err = capsys.readouterr().err
    status = [line for line in err.splitlines() if line.startswith("[context")]
    assert len(status) == 3
    assert all("reused" in s and "prefilled" in s and "first token" in s for s in status)


def test_checkpoint_resumes(tiny_dir: str, tmp_path: Path) -> None:
    script = tmp_path / "msgs.txt"
    script.write_text("hello , my name is ada .\n")
    ckpt = tmp_path / "chat.json"
    base = [
        "chat",
        "--model",
        tiny_dir,
        "--policy",
        "sliding",
        "--max-new-tokens",
        "6",
        "--script",
        str(script),
        "--json",
        "--checkpoint",
        str(ckpt),
    ]
    assert _run(base)[0] == 0 and ckpt.is_file()
    code, out = _run(base)
    assert code == 0
    assert json.loads(out.splitlines()[-1])["turn"] == 1  # the second session continued


def test_bad_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run(["chat", "--model", str(tmp_path / "missing.gguf"), "--script", "-"])
    assert code == 2
    assert "No such GGUF file" in capsys.readouterr().err


def test_status_line_format() -> None:
    stats = TurnStats(
        context_tokens=812,
        reused_tokens=790,
        prefill_tokens=22,
        evicted_tokens=0,
        latency_ms=1234.0,
        ttft_ms=210.0,
    )
    line = cli.status_line(stats, 2048)
    assert line.startswith("[context 812/2048 tok | reused 790 / prefilled 22")
    assert "1.23s" in line and "first token 0.21s" in line


def test_status_line_says_when_reuse_was_not_reported() -> None:
    stats = TurnStats(context_tokens=300, reused_tokens=None, prefill_tokens=280)
    line = cli.status_line(stats, 2048)
    assert "reused n/a / prefilled 280" in line


def test_kv_edit_flag(tiny_dir: str, tmp_path: Path) -> None:
    """`--kv-edit rerotate`: every turn reports the mode, and eviction turns edit the cache."""
    script = tmp_path / "msgs.txt"
    lines = [
        "hello , my name is ada and my sister is called eve .",
        "i live in paris with two cats and a dog .",
        "what is the name of my sister ?",
        "tell me about rome and london in the summer .",
        "my favourite food is pizza and i like tea in the morning .",
        "do you remember where i live ?",
        "we travel to tokyo by train next week .",
        "what do you think of my cats ?",
    ]
    script.write_text("\n".join(lines) + "\n")
    args = ["chat", "--model", tiny_dir, "--policy", "sliding", "--max-tokens", "160"]
    args += ["--max-new-tokens", "16", "--script", str(script), "--json"]
    code, out = _run([*args, "--kv-edit", "rerotate"])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert all(r["kv"]["mode"] == "rerotate" for r in rows)
    edited = [r for r in rows if r["kv"]["applied"] == "rerotate"]
    assert edited and all(r["evicted"] and r["kv"]["cut_tokens"] > 0 for r in edited)


def test_kv_keep_evicted_flag(tiny_dir: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`--kv-keep-evicted N` with `--kv-edit rerotate` and a recalling policy: a recalled
    message that was once history comes back from the kept keys and values
    (`kv.from_evicted`); without rerotate the flag is refused before the model loads."""
    script = tmp_path / "msgs.txt"
    lines = [
        "hello , my name is ada and my sister is called eve .",
        "i live in paris with two cats and a dog .",
        "tell me about rome and london in the summer .",
        "my favourite food is pizza and i like tea in the morning .",
        "we travel to tokyo by train next week .",
    ] * 3 + ["what is the name of my sister ?", "do you remember where i live ?"] * 3
    script.write_text("\n".join(lines) + "\n")
    args = ["chat", "--model", tiny_dir, "--policy", "hybrid", "--max-tokens", "200"]
    args += ["--max-new-tokens", "16", "--script", str(script), "--json"]
    args += ["--recall-layout", "stable"]
    code, out = _run([*args, "--kv-edit", "rerotate", "--kv-keep-evicted", "2048"])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert sum(r["kv"].get("from_evicted", 0) for r in rows) > 0
    assert all(r["reused_tokens"] + r["prefill_tokens"] == r["prompt_tokens"] for r in rows)
    code, out = _run([*args, "--kv-keep-evicted", "2048"])
    assert code == 2 and out == ""
    assert "needs --kv-edit rerotate" in capsys.readouterr().err


def test_serve_kv_options_reach_the_local_backend(tiny_dir: str, capsys) -> None:  # type: ignore[no-untyped-def]
    """`fmai serve --kv-edit rerotate --kv-keep-evicted N --kv-device-mb M` builds the local
    backend with them (each conversation's cache in its pool gets the edit mode); kept
    evictions without rerotate are refused before anything loads."""
    pytest.importorskip("starlette", reason="fmai serve needs fmai-torch[serve] (starlette)")
    from fmai_torch.serve.server import ServeOptions, build_backend

    opts = ServeOptions(model=tiny_dir, kv_edit="rerotate", kv_keep_evicted=512, kv_device_mb=2)
    backend, _, serial = build_backend(opts)
    assert serial and backend.kv_edit == "rerotate" and backend.kv_keep_evicted == 512
    assert backend.pool.device_bytes == 2 * 2**20
    kv, _ = backend.pool.get("someone")
    assert kv.mode == "rerotate" and kv.keep_evicted == 512
    code, _ = _run(["serve", "--model", tiny_dir, "--kv-keep-evicted", "512"])
    assert code == 2 and "needs --kv-edit rerotate" in capsys.readouterr().err


def test_a_reply_budget_larger_than_the_prompt_room_gets_a_note(  # type: ignore[no-untyped-def]
    tiny_dir: str, tmp_path: Path, capsys
) -> None:
    """`--max-tokens 384` with the default 256-token replies leaves 128 tokens for the prompt:
    the chat runs, and says so once, with a budget to try instead; a balanced one is quiet."""
    script = tmp_path / "msgs.txt"
    script.write_text("hello , my name is ada .\n")
    base = ["chat", "--model", tiny_dir, "--policy", "sliding", "--script", str(script)]
    code, _ = _run([*base, "--max-tokens", "384"])
    err = capsys.readouterr().err
    assert code == 0 and err.count("fmai: note: --max-new-tokens 256 leaves 128") == 1
    assert "Consider --max-new-tokens 96" in err
    code, _ = _run([*base, "--max-tokens", "384", "--max-new-tokens", "96"])
    assert code == 0 and "fmai: note" not in capsys.readouterr().err


def test_a_script_line_is_one_message_whatever_unicode_it_holds(
    tiny_dir: str, tmp_path: Path
) -> None:
    """Defect: `--script FILE` split the file with `str.splitlines`, which also breaks at
    U+2028, U+0085, form feeds and other separators, so one line became several messages
    (stdin split at newlines only). A line is now one message, as from stdin; CRLF files
    read as LF ones."""
    script = tmp_path / "msgs.txt"
    lines = ["first\u2028still first", "second\x0cstill\x85second", "third \u202eRTL 👩\u200d👧"]
    script.write_bytes("\r\n".join(lines).encode("utf-8") + b"\r\n")
    checkpoint = tmp_path / "chat.json"
    args = ["chat", "--model", tiny_dir, "--policy", "sliding", "--max-new-tokens", "4"]
    args += ["--script", str(script), "--json", "--checkpoint", str(checkpoint), "--no-kv-save"]
    code, out = _run(args)
    assert code == 0
    assert [json.loads(row)["turn"] for row in out.splitlines()] == [0, 1, 2]
    state = json.loads(checkpoint.read_text(encoding="utf-8"))["state"]
    users = [s for s in (*state["archive"], *state["history"]) if s["role"] == "user"]
    assert [s["text"] for s in sorted(users, key=lambda s: s["id"])] == lines


@pytest.mark.parametrize("content", [b"caf\xe9 au lait\n", None], ids=["not-utf8", "missing"])
def test_an_unreadable_script_is_a_clear_error_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None
) -> None:
    """Defect: a script that is not UTF-8, or is missing, ended in a traceback
    (UnicodeDecodeError, FileNotFoundError), after the model had been loaded."""
    script = tmp_path / "msgs.txt"
    if content is not None:
        script.write_bytes(content)
    model = tmp_path / "never-loaded.gguf"  # the script is read first: this is not reached
    code, _ = _run(["chat", "--model", str(model), "--script", str(script)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(script) in err and "never-loaded" not in err, err
    assert ("UTF-8" in err) if content is not None else ("no such file" in err.lower()), err


def test_a_checkpoint_that_cannot_be_written_is_a_clear_error(
    tiny_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect: `--checkpoint PATH` that could not be written (here: under a file) ended in
    a traceback after the first turn; it is now `fmai: error: ...` with the advice."""
    script = tmp_path / "msgs.txt"
    script.write_text("hello there\nand again\n")
    (tmp_path / "afile").write_text("x")
    args = ["chat", "--model", tiny_dir, "--max-new-tokens", "4", "--script", str(script)]
    code, _ = _run([*args, "--checkpoint", str(tmp_path / "afile" / "chat.json")])
    assert code == 1
    err = capsys.readouterr().err
    assert "fmai: error: Could not write the checkpoint" in err and "not a folder" in err, err
    assert "Traceback" not in err
