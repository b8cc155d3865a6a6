"""The memory inspector (`/ui/`) on a long conversation: page weight and time to interactive.

`fmai serve` runs as a subprocess with the loopback fake upstream
(`tests/core/fakeserver.py`); one conversation of N turns (default 500) is made through the
official openai SDK. Then Debian's `chromium`, headless and driven by Playwright (no
Playwright browser download), opens `/ui/#c=<id>` with the key in session storage, in a
fresh browser context each time (no cache), R times. Reported:

- **time to interactive**: from navigation start to the page's `fmai-interactive` mark,
  set once the conversation is open: the transcript (its newest 200 messages; earlier ones
  on demand), the four plots over every turn and the last turn's prompt parts are rendered
  and the chat box takes input. Also the browser's `domInteractive` and `load` events.
- **page weight**: bytes over the wire (`transferSize` of the navigation and of every
  resource and API call; nothing is compressed), split into the page's static files and
  the API's JSON.

Run: `python benchmarks/ui_load.py` (needs `fmai-torch[serve]`, `playwright` and
`chromium`); `--turns`, `--repeats`, `--chromium PATH`, `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))

import openai
from fakeserver import FakeProvider
from playwright.sync_api import sync_playwright

from _common import cpu_model, free_port, wait_until_up

KEY = "sk-bench-ui"
TOPICS = [
    "the garden and its tomatoes",
    "the train timetable to the museum",
    "a pasta recipe with garlic and basil",
    "my laptop battery after the update",
    "the football match on Saturday",
    "the weather forecast for the weekend",
    "my sister Ada who lives in Lisbon",
    "the book club's next novel",
]


def start_server(
    upstream: FakeProvider, store: str, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "fmai_torch.cli", "serve",
        "--upstream", upstream.openai_url, "--upstream-model", "fake",
        "--upstream-key-env", "BENCH_UPSTREAM_KEY", "--store", store, "--port", str(port),
        "--policy", "hybrid", "--max-tokens", "2048", "--max-new-tokens", "64",
        "--api-key", KEY, "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "BENCH_UPSTREAM_KEY": "sk-up"}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    wait_until_up(proc, base + "/healthz", 30, 0.05, log)
    return proc, base


def make_conversation(base: str, cid: str, turns: int) -> float:
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
    start = time.perf_counter()
    for i in range(turns):
        topic = TOPICS[i % len(TOPICS)]
        text = f"Turn {i}: let me tell you more about {topic}, detail number {i}."
        client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": text}],
            extra_headers={"X-Session-ID": cid},
        )
    return time.perf_counter() - start


MEASURE = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const mark = performance.getEntriesByName('fmai-interactive')[0];
  const resources = performance.getEntriesByType('resource').map(r => ({
    name: r.name, type: r.initiatorType, bytes: r.transferSize, body: r.decodedBodySize,
    start_ms: r.startTime, end_ms: r.responseEnd}));
  return {interactive_ms: mark.startTime, dom_interactive_ms: nav.domInteractive,
          load_ms: nav.loadEventEnd, html_bytes: nav.transferSize, resources: resources,
          transcript_items: document.querySelectorAll('#transcript li').length,
          plot_points: fmaiInspector.plots.map(u => u.data[0].length)};
}"""


def measure(browser: Any, base: str, cid: str) -> dict[str, Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(f"sessionStorage.setItem('fmai-inspector-key', {json.dumps(KEY)})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/ui/#c={cid}")
    page.wait_for_selector("body[data-state=ready] #conversation:not([hidden])", timeout=60_000)
    out = dict(page.evaluate(MEASURE))
    context.close()
    if errors:
        raise RuntimeError(f"the page failed: {errors}")
    static = sum(r["bytes"] for r in out["resources"] if r["type"] != "fetch")
    api = sum(r["bytes"] for r in out["resources"] if r["type"] == "fetch")
    out["static_bytes"] = out["html_bytes"] + static
    out["api_bytes"] = api
    out["total_bytes"] = out["static_bytes"] + api
    return out


def by_name(runs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Each run's resource entry for the request to `name` (a URL)."""
    return [next(r for r in run["resources"] if r["name"] == name) for run in runs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fmai-ui-bench-"))
    with FakeProvider(api_key="sk-up") as upstream:
        proc, base = start_server(upstream, f"sqlite:///{tmp / 'store.sqlite3'}", tmp / "log")
        try:
            made_s = make_conversation(base, "bench", args.turns)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                runs = [measure(browser, base, "bench") for _ in range(args.repeats)]
                version = browser.version
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    tti = [r["interactive_ms"] for r in runs]
    last = runs[-1]
    files = {
        r["name"].rsplit("/", 1)[-1] or "(page)": r["bytes"]
        for r in last["resources"]
        if r["type"] != "fetch"
    }
    api_calls = {
        r["name"].split("/v1", 1)[-1]: r["bytes"] for r in last["resources"] if r["type"] == "fetch"
    }
    # when each request started and ended (ms from navigation start), median over the runs
    times = {
        r["name"].split("/v1", 1)[-1]: [
            round(statistics.median(e[k] for e in by_name(runs, r["name"])), 1)
            for k in ("start_ms", "end_ms")
        ]
        for r in last["resources"]
    }
    result = {
        "turns": args.turns,
        "repeats": args.repeats,
        "chromium": version,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "conversation_made_s": round(made_s, 1),
        "interactive_ms": {
            "median": round(statistics.median(tti), 1),
            "min": round(min(tti), 1),
            "max": round(max(tti), 1),
        },
        "dom_interactive_ms_median": round(
            statistics.median(r["dom_interactive_ms"] for r in runs), 1
        ),
        "load_ms_median": round(statistics.median(r["load_ms"] for r in runs), 1),
        "static_bytes": last["static_bytes"],
        "api_bytes": last["api_bytes"],
        "total_bytes": last["total_bytes"],
        "static_files": {"index.html": last["html_bytes"], **files},
        "api_calls": api_calls,
        "request_times_ms": times,
        "transcript_items": last["transcript_items"],
        "plot_points": last["plot_points"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"memory inspector, {args.turns}-turn conversation, {args.repeats} cold loads")
    print(f"chromium {version} (headless), {result['cpu']}, {result['cpus']} CPUs")
    i = result["interactive_ms"]
    print(f"time to interactive: median {i['median']} ms (min {i['min']}, max {i['max']})")
    print(
        f"  domInteractive {result['dom_interactive_ms_median']} ms, load "
        f"{result['load_ms_median']} ms"
    )
    kib = 1024
    print(
        f"page weight: {result['total_bytes'] / kib:.0f} KiB = static "
        f"{result['static_bytes'] / kib:.0f} KiB + API JSON {result['api_bytes'] / kib:.0f} KiB"
    )
    for r in last["resources"]:
        if r["type"] != "fetch":
            begin, end = times[r["name"]]
            name = r["name"].rsplit("/", 1)[-1]
            print(f"  {name:52} {r['bytes'] / kib:7.1f} KiB  {begin:6.0f}-{end:4.0f} ms")
    for name, size in result["api_calls"].items():
        begin, end = times[name]
        print(f"  {name[:52]:52} {size / kib:7.1f} KiB  {begin:6.0f}-{end:4.0f} ms")
    items, points = result["transcript_items"], result["plot_points"]
    print(f"transcript items rendered: {items}; plot points: {points}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
