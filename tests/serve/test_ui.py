"""The memory inspector (`/ui/`) in a real headless Chromium: Debian's `chromium`, driven by
Playwright (never Playwright's own browser downloads).

The server is the real `fmai serve` on loopback with a fake upstream; the conversation is
made through the openai SDK. Set `FMAI_SCREENSHOT_DIR` (e.g. `docs/assets`) to keep the
screenshot the test takes (`inspector.png`); it goes to the test's temporary folder otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_chat import ask, get

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the inspector's browser tests need playwright (dependency group 'browser')",
)

KEY = "sk-inspector-3c9d1b"
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> hi'
FILLER = [
    "The garden needs compost and the tomatoes need water today.",
    "The forecast says rain and a storm on the weekend, so no hike.",
    "I tried a pasta recipe with garlic, lemon and fresh basil.",
    "My laptop battery dies fast after the last system update.",
    "The train to the museum was late again this morning.",
]
# a colour each plot draws its data in (see inspector.js), as RGB
PLOT_COLOURS = {
    "plot-parts": (0x3B, 0x82, 0xC4),  # history band
    "plot-cache": (0xD9, 0x82, 0x2B),  # prefilled band
    "plot-time": (0xC0, 0x40, 0x40),  # latency line
    "plot-evictions": (0xC8, 0x28, 0x28),  # eviction bars
}
COUNT_PIXELS = """([id, rgb]) => {
  const canvas = document.querySelector('#' + id + ' canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0 && Math.abs(data[i] - rgb[0]) < 12 && Math.abs(data[i + 1] - rgb[1]) < 12
        && Math.abs(data[i + 2] - rgb[2]) < 12) n++;
  }
  return n;
}"""


def chromium_path() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return (
        found if found else ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        try:
            # --no-sandbox: Chromium's sandbox cannot run as root (CI containers)
            b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        except sync_api.Error as exc:
            pytest.skip(f"chromium could not start: {str(exc)[:300]}")
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.problems = []  # console errors (a CSP violation is one) and uncaught exceptions
    pg.on("console", lambda m: pg.problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))
    yield pg
    context.close()


def make_conversation(server: Any, cid: str) -> None:
    client = server.client(KEY)
    ask(client, "My sister is called Ada and she lives in Lisbon.", cid)
    ask(client, XSS, cid)
    for i in range(10):
        ask(client, FILLER[i % len(FILLER)], cid)
    ask(client, "Where does my sister Ada live?", cid)


def open_page(page: Any, server: Any, key: str) -> Any:
    response = page.goto(server.url.removesuffix("/v1") + "/ui/")
    page.fill("#key", key)
    page.click("#key-form button[type=submit]")
    return response


def test_inspector_shows_turns_parts_plots_and_streams(
    serve: Any, tmp_path: Path, page: Any, upstream: Any
) -> None:
    server = serve(f"sqlite:///{tmp_path / 'ui.sqlite3'}", "--policy", "semantic",
                   "--api-key", KEY)  # fmt: skip
    make_conversation(server, "inspect-me")
    turns = get(server, "/conversations/inspect-me/turns", KEY)["data"]
    assert len(turns) == 13

    response = open_page(page, server, KEY)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    page.click("#conv-table a:text-is('inspect-me')")
    page.wait_for_selector("body[data-state=ready] #conversation:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('fmai-inspector-key')") == KEY
    assert page.evaluate("localStorage.length") == 0

    # the transcript, with the <script> message as text that did not run
    assert page.locator("#transcript li").count() == 26
    shown = page.locator("#transcript li[data-turn='1'][data-role='user'] .text").inner_text()
    assert shown == XSS
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#transcript script, #transcript img").count() == 0

    # the last turn: prompt parts with token counts, recalled with scores, stats
    assert page.inner_text("#turn-number") == "12"
    trace = get(server, "/conversations/inspect-me/turns/12", KEY)
    for part, tokens in trace["part_tokens"].items():
        assert page.get_attribute(f"#parts section[data-part={part}]", "data-tokens") == str(tokens)
    assert "Where does my sister Ada live?" in page.inner_text("#parts section[data-part=new]")
    recalled = page.locator("#recalled li").all_inner_texts()
    assert any("Lisbon" in r and re.search(r"score \d\.\d{3}", r) for r in recalled), recalled
    assert "recall_kept" in page.inner_text("#policy-stats")
    assert "ttft_ms" in page.inner_text("#turn-stats")

    # the four plots hold one point per turn and drew them
    data_lengths = page.evaluate("fmaiInspector.plots.map(u => u.data[0].length)")
    assert data_lengths == [13, 13, 13, 13]
    for plot_id, rgb in PLOT_COLOURS.items():
        assert page.evaluate(COUNT_PIXELS, [plot_id, list(rgb)]) > 30, plot_id

    # an older turn with an eviction: what was evicted then
    evicting = next(t for t in turns if t["evicted_segments"])
    n = evicting["turn"]
    page.click(f"#transcript li[data-turn='{n}'][data-role='user']")
    page.wait_for_function(f"() => document.getElementById('turn-number').textContent === '{n}'")
    page.wait_for_selector("#evicted li.segment")
    old = get(server, f"/conversations/inspect-me/turns/{n}", KEY)
    texts = page.locator("#evicted li.segment .text").all_inner_texts()
    assert texts == [s["text"] for s in old["evicted"]]

    # the archive search: what would be recalled, with scores; nothing changes
    before = get(server, "/conversations/inspect-me/checkpoint", KEY)
    page.fill("#search-input", "Lisbon sister")
    page.click("#search-form button")
    page.wait_for_selector("#search-results li")
    assert "Lisbon" in page.inner_text("#search-results")
    assert re.search(r"score \d\.\d{3}", page.inner_text("#search-results"))
    assert get(server, "/conversations/inspect-me/checkpoint", KEY) == before

    # the chat box streams the reply through /v1/chat/completions
    page.fill("#chat-input", "Tell me about the garden.")
    page.click("#chat-send")
    page.wait_for_function("() => document.getElementById('turn-number').textContent === '13'")
    page.wait_for_selector("body[data-state=ready]")
    assert upstream.requests[-1].get("stream") is True
    reply = page.locator("#transcript li[data-turn='13'][data-role='assistant'] .text")
    stored = get(server, "/conversations/inspect-me", KEY)
    assert (
        stored["turns"] == 14 and stored["messages"][-2]["content"] == "Tell me about the garden."
    )
    assert reply.inner_text() == stored["messages"][-1]["content"]
    assert reply.inner_text().startswith("reply to: ")
    assert page.evaluate("fmaiInspector.plots[0].data[0].length") == 14

    # the screenshot shows a turn that evicted and recalled, when there is one
    both = [t["turn"] for t in turns if t["evicted_segments"] and t["recalled_segments"]]
    shown_turn = both[-1] if both else n
    page.click(f"#transcript li[data-turn='{shown_turn}'][data-role='user']")
    page.wait_for_function(
        f"() => document.getElementById('turn-number').textContent === '{shown_turn}'"
    )
    page.wait_for_selector("#evicted li.segment")
    shots = Path(os.environ.get("FMAI_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "inspector.png"), full_page=True)
    assert (shots / "inspector.png").stat().st_size > 10_000
    assert page.problems == []  # no CSP violation, no script error


def test_a_wrong_key_sees_nothing(serve: Any, tmp_path: Path, page: Any) -> None:
    server = serve(f"sqlite:///{tmp_path / 'ui.sqlite3'}", "--api-key", KEY)
    base = server.url.removesuffix("/v1")
    with urllib.request.urlopen(base + "/ui", timeout=10) as r:  # redirected to /ui/
        assert r.url == base + "/ui/" and b"inspector.js" in r.read()
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    with urllib.request.urlopen(base + "/ui/inspector.js", timeout=10) as r:
        assert "javascript" in r.headers["Content-Type"]
    ask(server.client(KEY), "My secret plan is to visit Oslo.", "private")
    for attempt in ("sk-wrong-key", KEY + "x"):
        open_page(page, server, attempt)
        page.wait_for_selector("body[data-state=locked]")
        assert "refused" in page.inner_text("#status")
        assert page.is_hidden("#app")
        html = page.content()
        assert "private" not in html and "Oslo" not in html
        assert page.evaluate("sessionStorage.getItem('fmai-inspector-key')") is None
    # a wrong key left in session storage (a key revoked since) is dropped on load
    page.evaluate("sessionStorage.setItem('fmai-inspector-key', 'sk-revoked')")
    page.goto(server.url.removesuffix("/v1") + "/ui/#c=private")
    page.wait_for_selector("body[data-state=locked]")
    assert "Oslo" not in page.content() and page.is_hidden("#app")
    # the right key sees the conversation
    open_page(page, server, KEY)
    page.wait_for_selector("#conv-table a:text-is('private')")
