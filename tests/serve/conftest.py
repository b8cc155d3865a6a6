"""Fixtures: a fake upstream, `fmai serve` in a subprocess on loopback, and a real PostgreSQL.

The server under test is the real command (`python -m fmai_torch.cli serve --upstream ...`)
in its own process, driven through the official `openai` SDK. PostgreSQL is Debian's
`postgresql` package, started by `initdb` and `pg_ctl` in a temporary folder on a free
port (as the `postgres` user when the tests run as root, since PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="fmai serve tests need fmai-torch[serve] (starlette)")
pytest.importorskip("sqlalchemy", reason="fmai serve tests need fmai-torch[serve] (sqlalchemy)")
openai = pytest.importorskip("openai", reason="fmai serve tests need the openai SDK")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from fakeserver import FakeProvider  # noqa: E402

UPSTREAM_KEY = "sk-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`fmai serve` in a subprocess; `restart()` starts it again on the same port and store."""

    def __init__(self, upstream: FakeProvider, store: str, *args: str, log: Path) -> None:
        self.upstream, self.store, self.args, self.log = upstream, store, list(args), log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fmai_torch.cli",
            "serve",
            "--upstream",
            self.upstream.openai_url,
            "--upstream-model",
            "fake-model",
            "--upstream-key-env",
            "FMAI_TEST_UPSTREAM_KEY",
            "--upstream-timeout",
            "5",
            "--store",
            self.store,
            "--port",
            str(self.port),
            "--policy",
            "sliding",
            "--max-tokens",
            "400",
            "--max-new-tokens",
            "40",
            "--log-level",
            "warning",
            *self.args,
        ]

    def start(self, timeout: float = 180.0) -> Server:
        # Starting takes ~2 s of CPU (importing sqlalchemy, starlette and the openai SDK);
        # at load 11 on the 2-core machine that took over 30 s, so the wait is long.
        env = {**os.environ, "FMAI_TEST_UPSTREAM_KEY": UPSTREAM_KEY}
        env.pop("FMAI_API_KEYS", None)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fmai serve exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"fmai serve did not start: {self.log.read_text()[-3000:]}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=15)
        self.proc = None

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def client(self, key: str = "unused", **options: Any) -> Any:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, **options)

    def async_client(self, key: str = "unused") -> Any:
        return openai.AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeProvider]:
    with FakeProvider(api_key=UPSTREAM_KEY, slow_s=8.0) as provider:
        yield provider


# -- PostgreSQL -----------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


class Postgres:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        # As root the server runs as another user, who must reach its directory: the
        # session's TMPDIR may sit under a checkout only root can enter (a `mktemp -d`).
        base = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None
        self.dir = Path(tempfile.mkdtemp(prefix="fmai-pg-", dir=base))
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    pw = pwd.getpwnam(name)
                    self.user = name
                    os.chown(self.dir, pw.pw_uid, pw.pw_gid)
                    break

    def run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, cwd=self.dir)

    def start(self) -> None:
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "fmai", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on"
        self.run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start"
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def database(self, name: str) -> str:
        """Create database `name`; return its URL."""
        import sqlalchemy as sa

        admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url(name).replace("postgresql+psycopg://", "postgresql://")

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://fmai@127.0.0.1:{self.port}/{db}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (fmai-torch[serve])")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("postgresql is not installed (apt-get install postgresql): no initdb/pg_ctl")
    pg = Postgres(bindir)
    try:
        pg.start()
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pg.stop()
        pytest.skip(f"postgresql could not start: {exc} {detail.decode(errors='replace')[-500:]}")
    yield pg
    pg.stop()


_DB_COUNT = [0]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serve.sqlite3'}"
    pg = request.getfixturevalue("postgres")
    _DB_COUNT[0] += 1
    return pg.database(f"fmai_test_{_DB_COUNT[0]}")


@pytest.fixture
def serve(upstream: FakeProvider, tmp_path: Path) -> Iterator[Any]:
    """`serve(store, *args)` starts a server; all are stopped at the end of the test."""
    started: list[Server] = []

    def start(store: str, *args: str) -> Server:
        server = Server(upstream, store, *args, log=tmp_path / f"serve-{len(started)}.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
