"""Language and script detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmai_multilingual import Detection, detect

DATA = Path(__file__).parents[2] / "benchmarks" / "data" / "multilingual" / "chat_messages.tsv"


@pytest.mark.parametrize(
    ("text", "language", "script"),
    [
        ("Can you send me the report before the meeting?", "en", "Latn"),
        ("Kannst du mir bitte die Datei noch einmal schicken?", "de", "Latn"),
        ("¿Me puedes mandar el informe antes de la reunión?", "es", "Latn"),
        ("Можешь скинуть мне отчёт до начала совещания?", "ru", "Cyrl"),
        ("Можеш надіслати мені звіт до початку наради?", "uk", "Cyrl"),
        ("هل يمكنك أن ترسل لي التقرير قبل الاجتماع؟", "ar", "Arab"),
        ("می‌تونی گزارش رو قبل از جلسه برام بفرستی؟", "fa", "Arab"),
        ("מתי נסגר בית המרקחת ליד התחנה?", "he", "Hebr"),
        ("मीटिंग से पहले रिपोर्ट मुझे भेज सकते हो क्या?", "hi", "Deva"),
        ("开会之前你能把报告发给我吗？", "zh", "Hans"),
        ("你可以幫我訂一張八點四個人的桌子嗎？", "zh", "Hant"),
        ("会議の前にレポートを送ってもらえますか？", "ja", "Jpan"),
        ("회의 시작 전에 보고서 좀 보내줄 수 있어?", "ko", "Hang"),
        ("ช่วยส่งรายงานให้ฉันก่อนเริ่มประชุมได้ไหม", "th", "Thai"),
        ("μπορείς να μου στείλεις την αναφορά;", "el", "Grek"),
        ("დღეს საღამოს თავისუფალი ხარ?", "ka", "Geor"),
        ("կարծես երեկ բանալիներս մոռացել եմ", "hy", "Armn"),
        # Outside the benchmark set: scripts one language owns, and two shared-script ones.
        ("ሰላም ነው? ዛሬ ምን ታደርጋለህ", "am", "Ethi"),
        ("તમે આજે સાંજે શું કરો છો?", "gu", "Gujr"),
        ("ថ្ងៃនេះអ្នកសុខសប្បាយទេ", "km", "Khmr"),
        ("ඔයා අද රෑ මොකද කරන්නේ?", "si", "Sinh"),
        ("کیا آپ آج شام فارغ ہیں؟ مجھے آپ سے بات کرنی ہے", "ur", "Arab"),
        ("आज तुम्ही संध्याकाळी काय करताय? मला भेटायचं आहे", "mr", "Deva"),
    ],
)
def test_languages_and_scripts(text: str, language: str, script: str) -> None:
    found = detect(text)
    assert (found.language, found.script) == (language, script)
    assert 0.0 < found.confidence <= 1.0


def test_deterministic() -> None:
    text = "sorry I missed your call, I was driving home"
    assert len({detect(text) for _ in range(20)}) == 1


def test_no_letters_is_undetermined() -> None:
    assert detect("12:30 !!! 👍") == Detection("und", "Zyyy", 0.0)
    assert detect("") == Detection("und", "Zyyy", 0.0)


def test_mixed_language_reports_the_dominant_one() -> None:
    text = (
        "Hola. Ayer fui al mercado con mi hermana y compramos fruta, pan y queso para toda "
        "la semana. Después comimos juntas en un restaurante pequeño del centro. "
        "It was nice."
    )
    found = detect(text)
    assert found.language == "es"
    assert found.confidence < 1.0


def test_accuracy_on_the_benchmark_set() -> None:
    """The benchmark's own set: a regression guard for the figure the docs publish."""
    rows = [
        line.split("\t", 1)
        for line in DATA.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    hits = sum(detect(text).language == lang for lang, text in rows)
    assert len({lang for lang, _ in rows}) >= 25
    assert hits / len(rows) >= 0.95


def test_long_documents_are_detected_in_groups() -> None:
    english = "The train was late again this morning, so I missed the first meeting. "
    german = "Der Zug hatte heute Morgen wieder Verspätung, also habe ich es verpasst. "
    found = detect(english * 150 + german * 50)
    assert (found.language, found.script) == ("en", "Latn")
    assert 0.5 < found.confidence < 1.0
