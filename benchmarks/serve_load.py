"""`fmai serve` under load and under faults, through the official openai SDK (asyncio).

The upstream is the loopback fake provider (`tests/core/fakeserver.py`), which answers at
once; `fmai serve` runs as a subprocess (`python -m fmai_torch.cli serve --upstream ...`).

- **load**: C concurrent conversations x T turns, each sending only its new message. Reports
  requests/s and the p50/p95/p99 latency through fmai serve next to the same requests sent
  straight to the fake upstream at the same concurrency (the difference is what fmai adds:
  policy, store commit, HTTP hop), plus the policy's own time. Then every conversation is
  read back from the store: every acknowledged turn must be there, in order, exactly once.
- **kill**: the same kind of load while the server is SIGKILLed at random moments (K times)
  and restarted. A conversation whose turn failed moves on to a new message (no retry, so a
  turn committed but not acknowledged is told apart). Afterwards: every acknowledged turn
  is in the store, in order, exactly once; no half turn (each stored user message is followed
  by its own reply, and the checkpoint's turn count equals the stored turns).
- **upstream**: the upstream answers 429, 500 and stalls: the HTTP status each request gets,
  and whether the conversation's record and checkpoint are unchanged.

Run: `python benchmarks/serve_load.py` (needs `fmai-torch[serve]`); `--conversations`,
`--turns`, `--kills`, `--store URL` (default: a SQLite file in a temp folder), `--json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))

import openai
from fakeserver import FakeProvider

from _common import cpu_model, free_port, wait_until_up
from fmai_torch.serve.store import Store

KEY = "sk-bench"


class Server:
    """`fmai serve` in a subprocess: proxying `upstream`, or (`None`) the embedded model."""

    def __init__(
        self, upstream: FakeProvider | None, store: str, *extra: str, max_new_tokens: int = 64
    ) -> None:
        self.port, self.store = free_port(), store
        where = ["--upstream", upstream.openai_url, "--upstream-model", "fake"] if upstream else []
        self.cmd = [
            sys.executable,
            "-m",
            "fmai_torch.cli",
            "serve",
            *where,
            "--upstream-key-env",
            "BENCH_UPSTREAM_KEY",
            "--store",
            store,
            "--port",
            str(self.port),
            "--policy",
            "hybrid",
            "--max-tokens",
            "1024",
            "--max-new-tokens",
            str(max_new_tokens),
            "--log-level",
            "error",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        #: where the server's stderr goes (its log: warnings and errors), appended across
        #: restarts; `None`: discarded
        self.log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        env = {**os.environ, "BENCH_UPSTREAM_KEY": KEY}
        if self.log is None:
            self.proc = subprocess.Popen(self.cmd, env=env, stderr=subprocess.DEVNULL)
        else:
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(self.cmd, env=env, stderr=log)
        # 900 s: the embedded model's first load converts it
        wait_until_up(self.proc, self.url[:-3] + "/healthz", 900, 0.02, self.log)

    def cpu_s(self) -> float | None:
        """CPU seconds the server process has used (Linux `/proc`; `None` elsewhere)."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listen queue was full (Linux
    `TcpExt: ListenOverflows`; `None` elsewhere): a dropped SYN is retried after 1 s, then
    3 s, which a client sees as a stall."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:]))
            return int(row["ListenOverflows"]) if "ListenOverflows" in row else None
    return None


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] if s else float("nan")


def summary(values: list[float]) -> dict[str, float]:
    return {f"p{q}": round(pct(values, q), 2) for q in (50, 95, 99)}


class UpstreamClock:
    """The fake upstream's own time per request (ms), by the new message it answered.

    Timed inside its request handler, from the parsed request line and headers to the
    reply written: what the upstream itself spends, without the HTTP hop to it.
    """

    def __init__(self, upstream: FakeProvider) -> None:
        self.own_ms: dict[str, float] = {}
        self._local = threading.local()
        handler = upstream._server.RequestHandlerClass
        post, reply_text = handler.do_POST, upstream.reply_text
        clock = self

        def timed_post(self: Any) -> None:
            start = time.perf_counter()
            clock._local.key = None
            post(self)
            if clock._local.key is not None:
                clock.own_ms[clock._local.key] = (time.perf_counter() - start) * 1000

        def keyed_reply(messages: list[dict[str, str]], max_tokens: int) -> str:
            # the new message ends the last user message (after any recalled block)
            clock._local.key = str(messages[-1]["content"]).rsplit("\n\n", 1)[-1]
            return reply_text(messages, max_tokens)

        handler.do_POST = timed_post
        upstream.reply_text = keyed_reply  # type: ignore[method-assign]


def text_of(conv: int, turn: int) -> str:
    return f"Conversation {conv}, turn {turn}: my number today is {conv * 1000 + turn}."


async def run_load(
    url: str,
    conversations: int,
    turns: int,
    session: bool,
    clock: UpstreamClock | None = None,
    max_tokens: int | None = None,
    prefix: str = "load",
) -> dict[str, Any]:
    """C conversations x T turns at once; per request: latency (ms) and its parts.

    `added_ms`, per request: the latency the client saw less the upstream's own time for
    that request (`clock`, the fake upstream's), or, for the embedded model, less the
    model's time (`TurnStats.latency_ms - policy_ms`: the engine's turn, generation and
    prompt rendering, without the policy). The policy's time is inside `added_ms`;
    `added_less_policy_ms` takes it out (the target: p95 of that <= 10 ms).
    """
    client = openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=600)
    latency: list[float] = []
    policy: list[float] = []
    added: list[float] = []
    added_less_policy: list[float] = []
    outside_turn: list[float] = []
    upstream_own: list[float] = []
    acked: dict[int, list[tuple[str, str]]] = {c: [] for c in range(conversations)}
    failed = 0
    errors: dict[str, int] = {}  # the failed requests by status and error code

    async def one(c: int) -> None:
        nonlocal failed
        for t in range(turns):
            text = text_of(c, t)
            headers = {"X-Session-ID": f"{prefix}-{c}"} if session else {}
            start = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="fake",
                    messages=[{"role": "user", "content": text}],
                    extra_headers=headers,
                    **({} if max_tokens is None else {"max_tokens": max_tokens}),
                )
            except openai.APIError as exc:
                failed += 1
                status = getattr(exc, "status_code", None) or type(exc).__name__
                kind = f"{status} {getattr(exc, 'code', None) or ''}".strip()
                errors[kind] = errors.get(kind, 0) + 1
                continue
            ms = (time.perf_counter() - start) * 1000
            latency.append(ms)
            r = raw.parse()
            stats = (r.model_extra or {}).get("fmai", {}).get("turn_stats")
            if stats:
                policy.append(stats["policy_ms"])
                outside_turn.append(ms - stats["latency_ms"])
                own = (
                    clock.own_ms.get(text)
                    if clock is not None
                    else stats["latency_ms"] - stats["policy_ms"]
                )
                if own is not None:
                    upstream_own.append(own)
                    added.append(ms - own)
                    added_less_policy.append(ms - own - stats["policy_ms"])
            acked[c].append((text, r.choices[0].message.content or ""))

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(conversations)))
    wall = time.perf_counter() - start
    await client.close()
    n = len(latency)
    return {
        "requests": n,
        "failed": failed,
        "errors": errors,
        "wall_s": round(wall, 2),
        "requests_per_s": round(n / wall, 1),
        "latency_ms": summary(latency),
        "upstream_own_ms": summary(upstream_own),
        "added_ms": summary(added),
        "policy_ms": summary(policy),
        "added_less_policy_ms": summary(added_less_policy),
        "outside_turn_ms": summary(outside_turn),
        "acked": acked,
    }


def check_store(
    store_url: str, acked: dict[int, list[tuple[str, str]]], prefix: str, strict: bool
) -> dict[str, Any]:
    """Every acknowledged turn in the store, in order, exactly once; no half turn."""
    store = Store(store_url)
    problems: list[str] = []
    extra = 0
    for c, turns in acked.items():
        cid = f"{prefix}-{c}"
        msgs = store.messages("anonymous", cid)
        row = store.get("anonymous", cid, checkpoint=True)
        pairs = list(zip(msgs[::2], msgs[1::2]))
        if len(msgs) % 2 or any(u.role != "user" or a.role != "assistant" for u, a in pairs):
            problems.append(f"{cid}: not whole user/assistant pairs")
        if any(u.turn != a.turn for u, a in pairs):
            problems.append(f"{cid}: a reply stored with another turn's message")
        stored = [(u.content, a.content) for u, a in pairs]
        if len(set(stored)) != len(stored):
            problems.append(f"{cid}: a turn stored twice")
        it = iter(stored)
        if not all(any(s == t for s in it) for t in turns):  # acked is a subsequence, in order
            problems.append(f"{cid}: an acknowledged turn is missing or out of order")
        if strict and stored != turns:
            problems.append(f"{cid}: the store differs from what was acknowledged")
        if turns and row is None:
            problems.append(f"{cid}: missing")
        if row is not None:
            doc = json.loads(row.checkpoint or "{}")
            if row.turns != len(pairs) or doc["state"]["turn"] != len(pairs):
                problems.append(f"{cid}: checkpoint turns != stored turns (a half turn)")
        extra += len(stored) - len(turns)
    store.close()
    acknowledged = sum(len(t) for t in acked.values())
    return {
        "acknowledged": acknowledged,
        "stored_not_acknowledged": extra,
        "problems": problems[:10],
        "ok": not problems,
    }


async def kill_loop(server: Server, kills: int, stop: asyncio.Event) -> int:
    done = 0
    rng = random.Random(7)
    while done < kills:
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        server.kill()
        done += 1
        await asyncio.to_thread(server.start)
    stop.set()
    return done


async def run_kill(server: Server, conversations: int, kills: int) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=10)
    acked: dict[int, list[tuple[str, str]]] = {c: [] for c in range(conversations)}
    failed = 0
    stop = asyncio.Event()

    async def one(c: int) -> None:
        nonlocal failed
        t = 0
        while not stop.is_set():
            text = text_of(c, t)
            t += 1
            try:
                r = await client.chat.completions.create(
                    model="fake",
                    messages=[{"role": "user", "content": text}],
                    extra_headers={"X-Session-ID": f"kill-{c}"},
                )
                acked[c].append((text, r.choices[0].message.content or ""))
            except openai.APIError:
                failed += 1  # killed mid-turn: move on to a new message
                await asyncio.sleep(0.25)

    killer = asyncio.create_task(kill_loop(server, kills, stop))
    await asyncio.gather(*(one(c) for c in range(conversations)))
    done = await killer
    await client.close()
    return {"kills": done, "failed_requests": failed, "acked": acked}


def run_upstream_faults(server: Server, upstream: FakeProvider) -> dict[str, Any]:
    client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0)
    session = {"X-Session-ID": "faults"}
    for attempt in range(5):  # set-up, not measured: a first call on a busy machine can time out
        try:
            client.chat.completions.create(
                model="fake",
                extra_headers=session,
                messages=[{"role": "user", "content": "Remember 5512."}],
            )
            break
        except openai.APIStatusError:
            if attempt == 4:
                raise

    def record() -> Any:
        req = urllib.request.Request(server.url + "/conversations/faults/checkpoint")
        with urllib.request.urlopen(req) as r:
            return r.read()

    before = record()
    out: dict[str, Any] = {}
    for fault, times in (("429", 3), ("500", 3), ("slow", 1), ("stall", 1)):
        upstream.fail_next(fault, times)
        start = time.perf_counter()
        try:
            r = client.chat.completions.create(
                model="fake",
                extra_headers=session,
                stream=fault == "stall",
                messages=[{"role": "user", "content": "x"}],
            )
            if fault == "stall":
                for _ in r:  # type: ignore[union-attr]
                    pass
            status: Any = 200
        except openai.APIStatusError as exc:
            status = exc.status_code
        except openai.APIError as exc:  # an error event after the stream began
            status = f"200 then error event ({str(exc)[:40]}...)"
        out[fault] = {"status": status, "seconds": round(time.perf_counter() - start, 2)}
        upstream._faults.clear()
    out["memory_unchanged"] = record() == before
    return out


PARTS = ("sequential", "concurrent", "faults", "kill", "commit")


def commit_cost(folder: Path, rounds: int = 3, turns: int = 60) -> dict[str, Any]:
    """ms per turn commit of the SQLite store, `synchronous=full` and `normal` interleaved.

    Each commit writes a 35 KB checkpoint and a user + assistant message (a turn's writes
    without its trace), one conversation, in a fresh store per round and mode.
    """
    from fmai_torch.serve.store import NewMessage

    times: dict[str, list[float]] = {"full": [], "normal": []}
    for r in range(rounds):
        for mode in ("full", "normal") if r % 2 == 0 else ("normal", "full"):
            store = Store(f"sqlite:///{folder / f'commit-{mode}-{r}.sqlite3'}?synchronous={mode}")
            for t in range(turns):
                tx = store.begin_turn("bench", "c")
                new = [NewMessage("user", f"turn {t}", t), NewMessage("assistant", "ok", t, {})]
                start = time.perf_counter()
                tx.commit("x" * 35_000, new, t + 1, "bench")
                if t >= 5:  # the first commits create the tables' pages
                    times[mode].append((time.perf_counter() - start) * 1000)
                tx.close()
            store.close()
    return {mode: summary(v) for mode, v in times.items()}


class TempPostgres:
    """A PostgreSQL server from Debian's `postgresql` package in a temporary folder
    (`initdb`, `pg_ctl`; as the `postgres` user when run as root), `fsync=on`."""

    def __init__(self) -> None:
        found = shutil.which("pg_ctl")
        bins = [Path(found).resolve().parent] if found else []
        bins += [p.parent for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))]
        if not bins:
            raise SystemExit("no PostgreSQL: apt-get install postgresql (initdb, pg_ctl)")
        self.bindir, self.port = bins[-1], free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fmai-bench-pg-", dir="/tmp"))
        self.user = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            pw = pwd.getpwnam("postgres")
            self.user = "postgres"
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, cwd=self.dir)

    def start(self) -> str:
        data = str(self.dir / "data")
        self._run("initdb", "-D", data, "-A", "trust", "-U", "fmai", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run("pg_ctl", "-D", data, "-o", opts, "-l", str(self.dir / "log"), "-w", "start")
        return f"postgresql://fmai@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _clear(store: str) -> None:
    """Empty the store: the next run starts new conversations (reused ids would mix)."""
    check = Store(store)
    with check.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM fmai_turns")
        conn.exec_driver_sql("DELETE FROM fmai_messages")
        conn.exec_driver_sql("DELETE FROM fmai_conversations")
    check.close()


def measure_load(
    server: Server,
    upstream: FakeProvider | None,
    clock: UpstreamClock | None,
    loads: list[tuple[str, int, int]],
    max_tokens: int | None,
    warmup: int = 3,
) -> dict[str, Any]:
    """The load runs on one store: served (and, with a fake upstream, direct) figures.

    Each run starts on a fresh server, after `warmup` turns of another conversation
    (not measured): the first turn of a process pays one-off costs (the SDK's lazy imports
    in the load generator, the first connections), which are not a turn's cost.
    """
    out: dict[str, Any] = {}
    for label, conc, turns in loads:
        direct = None
        if upstream is not None:
            direct = asyncio.run(run_load(upstream.openai_url, conc, turns, False, None))
        if warmup:
            asyncio.run(run_load(server.url, 1, warmup, True, None, max_tokens, "warmup"))
        if clock is not None:
            clock.own_ms.clear()
        cpu_before, dropped_before = server.cpu_s(), listen_overflows()
        served = asyncio.run(run_load(server.url, conc, turns, True, clock, max_tokens))
        cpu_after, dropped_after = server.cpu_s(), listen_overflows()
        if dropped_before is not None and dropped_after is not None:
            served["listen_overflows"] = dropped_after - dropped_before
        if cpu_before is not None and cpu_after is not None and served["requests"]:
            # CPU the server spent per turn: steadier than latency on a busy machine
            served["server_cpu_ms_per_request"] = round(
                (cpu_after - cpu_before) * 1000 / served["requests"], 2
            )
        out[label] = {
            "conversations": conc,
            "turns": turns,
            "served": {k: v for k, v in served.items() if k != "acked"},
            "store_check": check_store(server.store, served["acked"], "load", strict=True),
        }
        if direct is not None:
            out[label]["direct"] = {
                k: v for k, v in direct.items() if k in ("requests_per_s", "latency_ms")
            }
        _clear(server.store)
        server.stop()
        server.start()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=50)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument(
        "--store",
        nargs="+",
        default=["sqlite"],
        help="store URLs, each measured in turn; 'sqlite': a SQLite file in a temp folder "
        "(synchronous=normal, the default); 'postgresql': a temporary PostgreSQL started "
        "with initdb/pg_ctl (default: sqlite)",
    )
    ap.add_argument("--sequential-turns", type=int, default=100)
    ap.add_argument(
        "--embedded",
        action="store_true",
        help="serve the embedded model (no --upstream) instead of the instant fake upstream",
    )
    ap.add_argument(
        "--max-new-tokens", type=int, default=64, help="reply budget (the embedded model's cost)"
    )
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="which measurements to run (default: all)",
    )
    ap.add_argument(
        "--server-log",
        type=Path,
        default=None,
        help="append fmai serve's stderr (its warnings and errors) to this file",
    )
    ap.add_argument(
        "--upstream-timeout",
        type=float,
        default=2.0,
        help="fmai serve --upstream-timeout (s) against the fake upstream (default: 2)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="turns of another conversation before each measured run (default: 3)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fmai-bench-"))
    results: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "upstream": "embedded model" if args.embedded else "instant fake",
        "stores": {},
    }
    if "commit" in args.parts:
        results["commit_ms"] = commit_cost(tmp)
    c, t = args.conversations, args.turns
    loads = [
        (label, conc, turns)
        for label, conc, turns in (("sequential", 1, args.sequential_turns), ("concurrent", c, t))
        if label in args.parts
    ]
    postgres: TempPostgres | None = None
    with contextlib.ExitStack() as stack:
        upstream: FakeProvider | None = None
        clock = None
        if not args.embedded:
            upstream = stack.enter_context(FakeProvider(api_key=KEY, slow_s=6.0))
            # answer without Nagle's delay: the fake's own latency is then its real work
            upstream._server.RequestHandlerClass.disable_nagle_algorithm = True
            clock = UpstreamClock(upstream)
        for n, spec in enumerate(args.store):
            if spec == "sqlite":
                url = f"sqlite:///{tmp / f'serve-{n}.sqlite3'}"
            elif spec == "postgresql":
                postgres = TempPostgres()
                stack.callback(postgres.stop)
                url = postgres.start()
            else:
                url = spec
            timeout = ["--upstream-timeout", str(args.upstream_timeout)] if upstream else []
            server = Server(upstream, url, *timeout, max_new_tokens=args.max_new_tokens)
            if args.server_log is not None:
                server.log = args.server_log
            server.start()
            got: dict[str, Any] = {"url": url}
            try:
                got.update(
                    measure_load(server, upstream, clock, loads, args.max_new_tokens, args.warmup)
                )
                if "faults" in args.parts and upstream is not None:
                    got["upstream_faults"] = run_upstream_faults(server, upstream)
                if "kill" in args.parts:
                    killed = asyncio.run(run_kill(server, min(20, c), args.kills))
                    got["kill"] = {
                        "kills": killed["kills"],
                        "failed_requests": killed["failed_requests"],
                        "store_check": check_store(url, killed["acked"], "kill", strict=False),
                    }
            finally:
                server.stop()
            results["stores"][spec] = got
    results["load_average_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"fmai serve load ({results['cpu']}, {results['cores']} cores, upstream: "
        f"{results['upstream']}; load average before {results['load_average_before']}, "
        f"after {results['load_average_after']})"
    )
    if "commit_ms" in results:
        print(f"SQLite commit ms per turn: {results['commit_ms']}")
    for spec, got in results["stores"].items():
        for label in ("sequential", "concurrent"):
            if label not in got:
                continue
            r = got[label]
            s = r["served"]
            print(f"\n[{spec}] {label}: {r['conversations']} conversations x {r['turns']} turns")
            print(f"  fmai serve: {s['requests_per_s']} req/s, failed {s['failed']} {s['errors']}")
            print(f"  latency ms:                   {s['latency_ms']}")
            print(f"  upstream's own ms:            {s['upstream_own_ms']}")
            print(f"  added by fmai serve ms:       {s['added_ms']}")
            print(f"  policy ms:                    {s['policy_ms']}")
            print(f"  added less the policy ms:     {s['added_less_policy_ms']}")
            print(f"  outside the engine's turn ms: {s['outside_turn_ms']}")
            if "direct" in r:
                d = r["direct"]
                print(f"  upstream directly: {d['requests_per_s']} req/s, ms {d['latency_ms']}")
            if "listen_overflows" in s:
                print(f"  connections dropped by a full listen queue: {s['listen_overflows']}")
            if "server_cpu_ms_per_request" in s:
                print(f"  server CPU per request: {s['server_cpu_ms_per_request']} ms")
            print(f"  store check: {r['store_check']}")
        if "upstream_faults" in got:
            print(f"[{spec}] upstream faults: {got['upstream_faults']}")
        if "kill" in got:
            k = got["kill"]
            print(
                f"[{spec}] SIGKILL x{k['kills']}: failed requests {k['failed_requests']}, "
                f"store check {k['store_check']}"
            )


if __name__ == "__main__":
    main()
