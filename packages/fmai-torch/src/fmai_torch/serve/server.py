"""Building and running `fmai serve`: the backend, the store, the app, then uvicorn.

The local model (torch) is imported only when it is served: with `--upstream` or
`--anthropic` the server runs without torch.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmai_core.errors import ConfigurationError

__all__ = ["ServeOptions", "build_app", "build_backend", "check_bind", "default_store_url", "run"]


@dataclass
class ServeOptions:
    """The options of `fmai serve` (see `fmai serve --help`)."""

    model: str | None = None
    upstream: str | None = None
    upstream_model: str | None = None
    upstream_key_env: str | None = None
    anthropic: bool = False
    upstream_timeout: float = 120.0
    store: str | None = None
    policy: str = "hybrid"
    max_tokens: int = 2048
    max_new_tokens: int = 256
    system: str | None = None
    max_policy_ms: float | None = None
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: list[str] = field(default_factory=list)
    insecure_public: bool = False
    limit_concurrency: int = 256
    log_level: str = "info"
    kv_device_mb: float = 1024.0
    kv_host_mb: float = 4096.0
    kv_disk_dir: str | None = None
    kv_edit: str = "recompute"
    kv_keep_evicted: int = 0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    engine_cache_mb: float = 256.0


def default_store_url() -> str:
    """`sqlite:///` + `serve.sqlite3` in the user's data folder (`$XDG_DATA_HOME/fmai`)."""
    from platformdirs import user_data_dir

    folder = Path(user_data_dir("fmai", appauthor=False))
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'serve.sqlite3'}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys_required: bool, insecure_public: bool) -> None:
    """Refuse a non-loopback address without API keys, unless `insecure_public`."""
    if not keys_required and not insecure_public and not _loopback(host):
        raise ConfigurationError(
            f"Refusing to serve on {host} without API keys: anyone who can reach it could read "
            "every conversation. Give --api-key KEY (or set FMAI_API_KEYS), bind to 127.0.0.1, "
            "or pass --insecure-public if a proxy in front of fmai authenticates."
        )


def build_backend(opts: ServeOptions) -> tuple[Any, str, bool]:
    """The backend, the model name to report, and whether replies must be generated serially."""
    if opts.anthropic:
        if not opts.upstream_model:
            raise ConfigurationError("--anthropic needs --upstream-model NAME (a Claude model).")
        from fmai_core.backends import AnthropicBackend

        backend: Any = AnthropicBackend(
            opts.upstream_model,
            api_key_env=opts.upstream_key_env,
            base_url=opts.upstream,
            turn_timeout=opts.upstream_timeout,
            # every process of a deployment counts a conversation alike: not by the texts
            # this process happens to have seen the upstream count
            count_per_text=False,
        )
        return backend, opts.upstream_model, False
    if opts.upstream:
        if not opts.upstream_model:
            raise ConfigurationError("--upstream needs --upstream-model NAME (the served model).")
        from fmai_core.backends import OpenAIBackend

        backend = OpenAIBackend(
            opts.upstream_model,
            base_url=opts.upstream,
            api_key_env=opts.upstream_key_env,
            timeout=min(60.0, opts.upstream_timeout),
            turn_timeout=opts.upstream_timeout,
            # every process of a deployment counts a conversation alike: not by the texts
            # this process happens to have seen the upstream count
            count_per_text=False,
        )
        return backend, opts.upstream_model, False
    from fmai_torch.backend import HFBackend  # torch is imported here, and only here

    # each conversation keeps its own KV cache in the backend's pool (EngineFactory.backend_for)
    backend = HFBackend(
        opts.model or "default",
        device=opts.device,
        progress=True,
        kv_device_bytes=int(opts.kv_device_mb * 2**20),
        kv_host_bytes=int(opts.kv_host_mb * 2**20),
        kv_disk_dir=opts.kv_disk_dir,
        kv_edit=opts.kv_edit,
        kv_keep_evicted=opts.kv_keep_evicted,
    )
    return backend, getattr(backend, "name", opts.model or "default"), True


def build_app(opts: ServeOptions, keys: list[str] | None = None) -> Any:
    """The app for `opts` (keys: the accepted API keys; `opts.api_keys` when `None`)."""
    from fmai_torch.serve.app import _Metrics, create_app
    from fmai_torch.serve.auth import Keys
    from fmai_torch.serve.sessions import EngineFactory, Sessions
    from fmai_torch.serve.store import Store

    accepted = Keys(opts.api_keys if keys is None else keys)
    check_bind(opts.host, accepted.required, opts.insecure_public)
    store = Store(opts.store or default_store_url())
    backend, name, serial = build_backend(opts)
    metrics = _Metrics()
    factory = EngineFactory(
        backend,
        policy=opts.policy,
        max_tokens=opts.max_tokens,
        max_new_tokens=opts.max_new_tokens,
        system=opts.system,
        max_policy_ms=opts.max_policy_ms,
        hooks=[metrics.exporter],
    )
    cache_bytes = int(opts.engine_cache_mb * 2**20)
    sessions = Sessions(store, factory, serial=serial, cache_bytes=cache_bytes)
    app = create_app(sessions, store, accepted, name, metrics, body_timeout=opts.body_timeout)
    app.state.store_where = store.where
    return app


def head_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's line and headers.

    uvicorn arms no timer before a request's head is complete, so a client that connects
    and sends nothing, or a few bytes a minute (slowloris), holds its connection for ever;
    a few hundred such sockets reach `--limit-concurrency`, and every real request gets a
    503. Here a connection must send a whole request head within `seconds` of connecting
    (or, on a kept-alive connection, of the first byte of its next request), else it is
    closed. A request whose head has arrived is not limited: its body and the reply (a
    long stream) take what they take.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutH11(H11Protocol):
        _head_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request is under way: its head arrived
            elif not self.transport.is_closing():
                self._arm()  # bytes of the next request's head, on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(seconds, self._head_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

    return HeadTimeoutH11


def run(opts: ServeOptions) -> int:
    """Serve until interrupted; return the exit status."""
    import uvicorn

    from fmai_core.errors import FMAIError
    from fmai_torch.serve.auth import keys_from_env

    keys = [*opts.api_keys, *keys_from_env()]
    try:
        app = build_app(opts, keys)
    except FMAIError as exc:
        print(f"fmai: error: {exc}", file=sys.stderr)
        return 2
    if opts.limit_concurrency < 0:
        print("fmai: error: --limit-concurrency must be 0 (no limit) or more", file=sys.stderr)
        return 2
    if not opts.header_timeout > 0:
        print("fmai: error: --header-timeout must be a number of seconds above 0", file=sys.stderr)
        return 2
    if not opts.body_timeout > 0:
        print("fmai: error: --body-timeout must be a number of seconds above 0", file=sys.stderr)
        return 2
    auth = f"{len(set(keys))} API key(s)" if keys else "no API keys"
    print(
        f"fmai serve: http://{opts.host}:{opts.port}/v1 ({auth}), store {app.state.store_where}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=opts.host,
        port=opts.port,
        log_level=opts.log_level,
        timeout_graceful_shutdown=5,
        server_header=False,
        # bounded: each connection may hold a body of up to 32 MiB and a turn a store
        # connection; past the limit uvicorn answers 503 at once (the SDK retries those)
        limit_concurrency=opts.limit_concurrency or None,
        # a request's line and headers must arrive within --header-timeout seconds
        http=head_timeout_protocol(opts.header_timeout),
    )
    return 0
