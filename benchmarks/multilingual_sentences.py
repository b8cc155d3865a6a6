"""Sentence splitting in many scripts: fmai_multilingual versus the core's default splitter.

The test set, `benchmarks/data/multilingual/sentences.tsv`, holds short multi-sentence texts
(abbreviations, numbers, times, quotes, and each script's own punctuation) in 20 languages.
A boundary is the position between two sentences; precision and recall count boundaries,
"texts right" the texts split exactly as labelled.

    uv run --no-project --with ./packages/fmai-core --with ./packages/fmai-multilingual \\
        python benchmarks/multilingual_sentences.py
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from fmai_core.text import split_sentences as core_split
from fmai_multilingual import split_sentences

DATA = Path(__file__).parent / "data" / "multilingual" / "sentences.tsv"
UNSPACED = {"zh", "ja"}
REPEATS = 200


def load() -> list[tuple[str, str, list[str]]]:
    rows = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            lang, *sentences = line.split("\t")
            text = ("" if lang in UNSPACED else " ").join(sentences)
            rows.append((lang, text, sentences))
    return rows


def boundaries(text: str, pieces: list[str]) -> set[int]:
    """Character offsets (ignoring spaces) where one piece ends and the next begins."""
    out, position = set(), 0
    for piece in pieces[:-1]:
        position += len("".join(piece.split()))
        out.add(position)
    return out


def score(split: Callable[[str], list[str]], rows: list[tuple[str, str, list[str]]]) -> dict:
    right: dict[str, list[bool]] = defaultdict(list)
    tp = fp = fn = 0
    for lang, text, expected in rows:
        got = split(text)
        right[lang].append(got == expected)
        want, have = boundaries(text, expected), boundaries(text, got)
        tp, fp, fn = tp + len(want & have), fp + len(have - want), fn + len(want - have)
    start = time.perf_counter()
    for _ in range(REPEATS):
        for _, text, _ in rows:
            split(text)
    us = (time.perf_counter() - start) * 1e6 / (REPEATS * len(rows))
    return {"right": right, "precision": tp / (tp + fp), "recall": tp / (tp + fn), "us": us}


def main() -> None:
    rows = load()
    results = {
        "fmai_multilingual.split_sentences": score(split_sentences, rows),
        "fmai_core.text.split_sentences": score(core_split, rows),
    }
    names = list(results)
    print(
        f"{len(rows)} texts, {sum(len(r[2]) for r in rows)} sentences, "
        f"{len({r[0] for r in rows})} languages\n"
    )
    print("| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for key, label in (("precision", "boundary precision"), ("recall", "boundary recall")):
        print(f"| {label} | " + " | ".join(f"{results[n][key] * 100:.1f}%" for n in names) + " |")
    texts = [sum(sum(v) for v in results[n]["right"].values()) for n in names]
    print("| texts split exactly | " + " | ".join(f"{t} of {len(rows)}" for t in texts) + " |")
    print("| µs per text | " + " | ".join(f"{results[n]['us']:.1f}" for n in names) + " |")
    print("\nTexts split exactly, by language:\n")
    print("| language | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for lang in dict.fromkeys(r[0] for r in rows):
        cells = [
            f"{sum(results[n]['right'][lang])}/{len(results[n]['right'][lang])}" for n in names
        ]
        print(f"| {lang} | " + " | ".join(cells) + " |")
    misses = [(lang, t, split_sentences(t)) for lang, t, e in rows if split_sentences(t) != e]
    print("\nfmai_multilingual misses:\n")
    for lang, text, got in misses:
        print(f"- {lang}: `{text}` -> {got}")


if __name__ == "__main__":
    main()
