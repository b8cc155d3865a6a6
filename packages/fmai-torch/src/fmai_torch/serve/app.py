"""The ASGI application of `fmai serve` (Starlette): the OpenAI-compatible API.

Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/conversations`,
`GET|DELETE /v1/conversations/{id}`, `GET /v1/conversations/{id}/checkpoint`,
`GET /v1/conversations/{id}/messages` (paged, newest first), `GET
/v1/conversations/{id}/turns` (paged) and `.../turns/{n}` (a turn's trace),
`POST /v1/conversations/{id}/search` (what the policy would recall, no side effect),
`GET /healthz`, `GET /metrics`, and the memory inspector's page under `/ui/`.
Every error is OpenAI's JSON error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fmai_core.errors import FMAIError
from fmai_torch.serve.auth import Keys
from fmai_torch.serve.protocol import (
    ApiError,
    check_id,
    chunk,
    completion,
    error_body,
    from_fmai_error,
    new_id,
    parse_chat_request,
    usage,
)
from fmai_torch.serve.sessions import Sessions, Started, TurnOutcome, unloadable
from fmai_torch.serve.store import Store, StoreConflict, StoreError

__all__ = ["CONTENT_SECURITY_POLICY", "SESSION_HEADER", "STATS_HEADER", "UI_DIR", "create_app"]

#: The request (and response) header naming the conversation.
SESSION_HEADER = "X-Session-ID"
#: The response header holding the turn's `TurnStats` as JSON.
STATS_HEADER = "X-FMAI-Turn-Stats"
#: The response header naming the conversation a contradicting history was forked from.
FORKED_HEADER = "X-FMAI-Forked-From"

log = logging.getLogger("fmai.serve")
T = TypeVar("T")
#: The end of a turn's events (see `chat`'s stream).
_END = object()

#: The memory inspector's page (plain HTML, CSS and JS, with uPlot vendored), served at `/ui/`.
UI_DIR = Path(__file__).parent / "ui"
#: Sent with every response: scripts and styles only from the server itself (no inline
#: script, no eval), requests only to it, no frames, forms, plugins or other origins.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StoreConflict):
        return ApiError(409, str(exc), type="conflict_error", code="conversation_busy")
    if isinstance(exc, StoreError):
        return ApiError(503, str(exc), type="server_error", code="store_unavailable")
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)):
        # the database went away, refused the connection, or the pool stayed busy
        log.warning("fmai serve: the store is unavailable: %s", type(exc).__name__)
        return ApiError(
            503,
            f"The conversation store is unavailable ({type(exc).__name__}). Nothing was "
            "stored: retry later; GET /healthz says when the store answers again.",
            type="server_error",
            code="store_unavailable",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, FMAIError):
        return from_fmai_error(exc)
    log.exception("fmai serve: unexpected error")
    return ApiError(
        500,
        "Internal server error; the turn was not stored. See the server log.",
        type="server_error",
    )


class _Metrics:
    """Prometheus: the engines' turn metrics plus request counts by route and status."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        from fmai_core.telemetry import PrometheusExporter

        self.exporter = PrometheusExporter()
        self.requests = Counter(
            "fmai_serve_requests",
            "HTTP requests answered.",
            ["route", "status"],
            registry=self.exporter.registry,
        )
        self.active = Gauge(
            "fmai_serve_active_turns", "Turns running now.", registry=self.exporter.registry
        )


def create_app(
    sessions: Sessions,
    store: Store,
    keys: Keys,
    model_name: str,
    metrics: Any = None,
    *,
    threads: int = 64,
    body_timeout: float = 30.0,
) -> Starlette:
    """The Starlette app serving `sessions` from `store`.

    Args:
        sessions: Runs the turns.
        store: The conversation store.
        keys: The accepted API keys (none: no authentication).
        model_name: The model id `GET /v1/models` lists and completions name.
        metrics: A `_Metrics` (built when `None`), whose exporter is among the engines' hooks.
        threads: Worker threads for the store and the model (blocking calls).
        body_timeout: Seconds a request has to send its whole body once its head arrived
            (past them: 408 and the connection closed).
    """
    metrics = metrics or _Metrics()
    running: set[asyncio.Task[None]] = set()  # streamed turns still running

    def owner(request: Request) -> str:
        found = keys.owner(request.headers.get("authorization"))
        if found is None:
            raise ApiError(
                401,
                "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                type="invalid_request_error",
                code="invalid_api_key",
            )
        return found

    async def chat(request: Request) -> Response:
        who = owner(request)
        req = parse_chat_request(await _read_body(request, seconds=body_timeout))
        # the first given, even empty: an empty id is refused, not taken as none (one-off);
        # but `user` is OpenAI's own field, which clients may send empty: absent then
        given = (request.headers.get(SESSION_HEADER), req.metadata_id, req.user or None)
        cid = next((c for c in given if c is not None), None)
        if cid is not None:
            check_id(cid)
        start = time.perf_counter()
        events = sessions.turn(who, cid, req)

        async def opening() -> tuple[Any, Any]:
            started = await anext(events)
            first = await anext(events)  # plan and the model's first output: errors are HTTP
            if not req.stream:  # the whole turn, to its commit
                async for event in events:
                    first = event
            return started, first

        metrics.active.inc()
        try:
            # a client that hangs up before its reply (its SDK timed out: it will retry)
            # cancels the turn, which then stores nothing
            opened = await _unless_hung_up(request, opening())
        except BaseException:
            metrics.active.dec()
            await events.aclose()
            raise
        if opened is None:
            metrics.active.dec()
            await events.aclose()
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        started, first = opened
        assert isinstance(started, Started)
        headers = {}
        if started.conversation_id is not None:
            headers[SESSION_HEADER] = started.conversation_id
        if started.forked_from is not None:
            headers[FORKED_HEADER] = started.forked_from
        comp_id, model = new_id(), model_name
        if not req.stream:
            metrics.active.dec()
            outcome = first
            assert isinstance(outcome, TurnOutcome)
            stats = outcome.stats
            headers[STATS_HEADER] = json.dumps(stats, separators=(",", ":"))
            total = (time.perf_counter() - start) * 1000
            headers["Server-Timing"] = (
                f"fmai;dur={total:.2f}, turn;dur={stats['latency_ms']:.2f}, "
                f"policy;dur={stats['policy_ms']:.2f}"
            )
            body = completion(
                comp_id, model, outcome.text, outcome.finish_reason, stats, started.conversation_id
            )
            return JSONResponse(body, headers=headers)

        # The turn runs to its commit at its own pace, whatever pace the client reads at:
        # its pieces wait in `queue` (at most the reply), so a client that stops reading
        # holds neither the conversation's lock nor a store connection nor the model.
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in events:
                    queue.put_nowait(event)
            except Exception as exc:  # after the headers: an error event ends the stream
                queue.put_nowait(_as_api_error(exc))
            finally:
                queue.put_nowait(_END)

        def ended(task: asyncio.Task[None]) -> None:
            running.discard(task)
            metrics.active.dec()

        turn = asyncio.create_task(pump())
        running.add(turn)  # a strong reference until it ends (the loop keeps a weak one)
        turn.add_done_callback(ended)

        async def sse() -> AsyncIterator[str]:
            event: Any = first
            try:
                yield chunk(comp_id, model, {"role": "assistant", "content": ""})
                while True:
                    if isinstance(event, TurnOutcome):  # committed: acknowledge
                        stats = event.stats
                        fmai = {"conversation_id": started.conversation_id, "turn_stats": stats}
                        yield chunk(comp_id, model, {}, event.finish_reason, fmai=fmai)
                        if req.include_usage:
                            yield chunk(comp_id, model, None, usage=usage(stats))
                        yield "data: [DONE]\n\n"
                        return
                    if isinstance(event, ApiError):
                        yield "data: " + json.dumps(event.body()) + "\n\n"
                        return
                    if event is _END:
                        return
                    yield chunk(comp_id, model, {"content": event})
                    event = await queue.get()
            finally:
                # the client hung up before the turn committed: it is not stored
                if not turn.done() and not isinstance(event, TurnOutcome):
                    turn.cancel()
                await asyncio.wait([turn])
                await events.aclose()

        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

    async def models(request: Request) -> Response:
        owner(request)
        data = [{"id": model_name, "object": "model", "created": 0, "owned_by": "fmai"}]
        return JSONResponse({"object": "list", "data": data})

    async def list_conversations(request: Request) -> Response:
        who = owner(request)
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise ApiError(400, "limit must be a whole number from 1 to 100.", param="limit")
        after = request.query_params.get("after")
        rows, more = await asyncio.to_thread(store.list, who, limit=limit, after=after)
        data = [_summary(r) for r in rows]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "has_more": more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def _found(request: Request, checkpoint: bool) -> tuple[str, Any]:
        who = owner(request)
        cid = check_id(request.path_params["cid"])
        row = await asyncio.to_thread(store.get, who, cid, checkpoint=checkpoint)
        if row is None:
            raise ApiError(404, f"No conversation {cid!r}.", code="conversation_not_found")
        return who, row

    async def get_conversation(request: Request) -> Response:
        # the record is paged as /messages pages it (newest first): a long conversation's
        # detail stays bounded (the prompt's parts are bounded by the budget, the archive
        # by `archive_limit`)
        limit = _int_param(request, "limit", 200, 1, 1000)
        before = request.query_params.get("before")
        end = None if before is None else _int_param(request, "before", 0, 0, 2**31)
        who, row = await _found(request, True)
        msgs, more = await asyncio.to_thread(
            store.messages_page, who, row.id, limit=limit, before=end
        )
        last = None
        if row.turns:
            last = await asyncio.to_thread(store.turn_trace, who, row.id, row.turns - 1)
        try:
            detail = _detail(row, msgs, more, last)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # a damaged row
            reason = f"its stored checkpoint is damaged ({type(exc).__name__}: {exc})."
            raise from_fmai_error(unloadable(row.id, reason)) from None
        return JSONResponse(detail)

    async def delete_conversation(request: Request) -> Response:
        who = owner(request)
        cid = check_id(request.path_params["cid"])
        async with sessions._local((who, cid)):
            existed = await asyncio.to_thread(store.delete, who, cid)
            # in a thread: dropping a local model's KV cache waits for the model's lock
            await asyncio.to_thread(sessions.forget, who, cid)
        if not existed:
            raise ApiError(404, f"No conversation {cid!r}.", code="conversation_not_found")
        return JSONResponse({"id": cid, "object": "conversation.deleted", "deleted": True})

    async def list_turns(request: Request) -> Response:
        who, row = await _found(request, False)
        limit = _int_param(request, "limit", 100, 1, 1000)
        after = request.query_params.get("after")
        start = None if after is None else _int_param(request, "after", 0, -1, 2**31)
        rows, more = await asyncio.to_thread(
            store.turns_json, who, row.id, limit=limit, after=start
        )
        # the stored summaries are JSON already: spliced in, not parsed and dumped again
        first = json.loads(rows[0])["turn"] if rows else None
        last = json.loads(rows[-1])["turn"] if rows else None
        head = {"object": "list", "has_more": more, "first_id": first, "last_id": last}
        body = json.dumps(head)[:-1] + ', "data": [' + ",".join(rows) + "]}"
        return Response(body.encode(), media_type="application/json")

    async def list_messages(request: Request) -> Response:
        who, row = await _found(request, False)
        limit = _int_param(request, "limit", 200, 1, 1000)
        before = request.query_params.get("before")
        end = None if before is None else _int_param(request, "before", 0, 0, 2**31)
        msgs, more = await asyncio.to_thread(
            store.messages_page, who, row.id, limit=limit, before=end
        )
        data = [_message(m) for m in msgs]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "has_more": more,
                "first_id": data[0]["seq"] if data else None,
                "last_id": data[-1]["seq"] if data else None,
            }
        )

    async def get_turn(request: Request) -> Response:
        who, row = await _found(request, False)
        raw = request.path_params["turn"]
        if raw == "latest" and row.turns:
            raw = str(row.turns - 1)
        if not _TURN.fullmatch(raw) or int(raw) > _MAX_TURN:
            raise ApiError(
                400, f"A turn is a whole number from 0 or 'latest', got {raw!r}.", param="turn"
            )
        found = await asyncio.to_thread(store.turn_trace, who, row.id, int(raw))
        if found is None:
            raise ApiError(
                404,
                f"Conversation {row.id!r} has no trace of turn {raw} (turns are numbered from "
                "0; turns stored before schema 2 have none).",
                code="turn_not_found",
            )
        return JSONResponse({"object": "conversation.turn", **found})

    async def search(request: Request) -> Response:
        who = owner(request)
        cid = check_id(request.path_params["cid"])
        raw = await _read_body(request, seconds=body_timeout)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError(400, 'The body must be JSON: {"query": "..."}.') from None
        query = body.get("query") if isinstance(body, dict) else None
        if not isinstance(query, str) or not query.strip():
            raise ApiError(400, "'query' must be a non-empty string.", param="query")
        found = await sessions.search(who, cid, query)
        if found is None:
            raise ApiError(404, f"No conversation {cid!r}.", code="conversation_not_found")
        return JSONResponse({"object": "conversation.search", "query": query, **found})

    async def checkpoint(request: Request) -> Response:
        _, row = await _found(request, True)
        return Response(row.checkpoint, media_type="application/json")

    async def healthz(request: Request) -> Response:
        try:
            await asyncio.to_thread(store.ping)
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "store": store.dialect, "error": type(exc).__name__},
                status_code=503,
            )
        return JSONResponse({"status": "ok", "store": store.dialect, "model": model_name})

    async def prometheus(request: Request) -> Response:
        owner(request)
        return Response(
            metrics.exporter.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def on_api_error(request: Request, exc: Exception) -> Response:
        return _error(_as_api_error(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        body = error_body(f"{exc.detail} ({request.method} {request.url.path})", kind)
        return JSONResponse(body, status_code=exc.status_code)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(threads))
        # what the first turn would import on the event loop (the upstream's SDK client,
        # its HTTP stack, anyio's event loop backend: ~0.3 s), before serving
        warm = getattr(sessions.factory.backend, "awarm", None)
        if warm is not None:
            await warm()
        anyio.get_cancelled_exc_class()  # loads anyio's asyncio backend (httpcore uses it)
        try:
            yield
        finally:
            sessions.factory.close()  # its scratch folder
            store.close()

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/conversations", list_conversations, methods=["GET"]),
        Route("/v1/conversations/{cid}", get_conversation, methods=["GET"]),
        Route("/v1/conversations/{cid}", delete_conversation, methods=["DELETE"]),
        Route("/v1/conversations/{cid}/checkpoint", checkpoint, methods=["GET"]),
        Route("/v1/conversations/{cid}/messages", list_messages, methods=["GET"]),
        Route("/v1/conversations/{cid}/turns", list_turns, methods=["GET"]),
        Route("/v1/conversations/{cid}/turns/{turn}", get_turn, methods=["GET"]),
        Route("/v1/conversations/{cid}/search", search, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Mount("/ui", app=StaticFiles(directory=UI_DIR, html=True), name="ui"),
    ]
    handlers: dict[Any, Any] = {
        ApiError: on_api_error,
        FMAIError: on_api_error,
        HTTPException: on_http,
        Exception: on_api_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.add_middleware(_CountRequests, counter=metrics.requests)
    app.add_middleware(_SecurityHeaders)
    app.state.metrics = metrics
    return app


class _SecurityHeaders:
    """ASGI middleware: the Content-Security-Policy and related headers on every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, secured)


class _CountRequests:
    """ASGI middleware: count answered requests by route and status (ids collapsed)."""

    def __init__(self, app: Any, counter: Any) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.startswith("/v1/conversations/"):
            rest = path.split("/")[4:]  # after /v1/conversations/{id}
            named = {"checkpoint": "/checkpoint", "search": "/search", "messages": "/messages"}
            suffix = named.get(rest[0] if rest else "")
            if rest and rest[0] == "turns":
                suffix = "/turns/{n}" if len(rest) > 1 else "/turns"
            path = "/v1/conversations/{id}" + (suffix or "")
        elif path.startswith("/ui"):
            path = "/ui"
        elif path not in _PATHS:
            path = "other"

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.counter.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/models", "/v1/conversations", "/healthz", "/metrics"}
)


#: A turn number in a path: ASCII digits (`str.isdigit` takes "²" and other scripts' digits).
_TURN = re.compile(r"[0-9]{1,10}")
_MAX_TURN = 2**31 - 1
#: The largest request body read; above it the answer is 413 (the body is not kept). A
#: whole-history request of a conversation of thousands of turns fits many times over.
MAX_BODY_BYTES = 32 << 20


async def _read_body(
    request: Request, limit: int = MAX_BODY_BYTES, seconds: float | None = None
) -> bytes:
    """The request's body, or `ApiError` 413 once it is over `limit` bytes.

    A declared `Content-Length` over the limit is refused before reading; a chunked body is
    read on past the limit (discarded, up to twice it) so the client gets the answer. A body
    that has not all arrived within `seconds` is refused (408): a client trickling
    its body (a slow-body slowloris) would hold a connection slot for ever.
    """
    too_big = ApiError(
        413,
        f"The request body is over {limit >> 20} MiB: send only the new message (the server "
        "keeps the conversation's history). Nothing was changed.",
        code="request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_big
    parts: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for piece in request.stream():
            size += len(piece)
            if size > 2 * limit:
                break
            if size <= limit:
                parts.append(piece)

    try:
        await asyncio.wait_for(read(), seconds)
    except ClientDisconnect:  # nobody reads the answer; nothing unexpected happened
        raise ApiError(
            499, "The client hung up before its request was complete. Nothing was changed."
        ) from None
    except asyncio.TimeoutError:
        raise ApiError(
            408,
            f"The request body did not arrive within {seconds:g} s (the server's "
            "--body-timeout). Nothing was changed.",
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None
    if size > limit:
        raise too_big
    return b"".join(parts)


async def _unless_hung_up(request: Request, step: Coroutine[Any, Any, T]) -> T | None:
    """`step`'s result; or `None` when the client hangs up first: `step` is then cancelled
    (a turn is not stored, unless its commit had begun: that one finishes first)."""
    task = asyncio.ensure_future(step)

    async def hung_up() -> None:
        # the body is read: the next message the server gets is the disconnect
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait([task, watch], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():  # the client hung up (or this request is being cancelled)
            task.cancel()
            await asyncio.wait([task])
    if task.cancelled():
        return None
    return task.result()


def _int_param(request: Request, name: str, default: int, least: int, most: int) -> int:
    raw = request.query_params.get(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        value = least - 1
    if not least <= value <= most:
        raise ApiError(400, f"{name} must be a whole number from {least} to {most}.", param=name)
    return value


def _summary(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "conversation",
        "title": row.title,
        "turns": row.turns,
        "messages": row.message_count,
        "prompt_tokens": row.prompt_tokens,
        "archive_tokens": row.archive_tokens,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _message(m: Any) -> dict[str, Any]:
    return {
        "seq": m.seq,
        "turn": m.turn,
        "role": m.role,
        "content": m.content,
        "created_at": m.created_at,
    }


def _detail(
    row: Any, msgs: list[Any], more: bool, trace: dict[str, Any] | None = None
) -> dict[str, Any]:
    doc = json.loads(row.checkpoint)
    state, settings = doc["state"], doc["settings"]
    stats = [m.stats for m in msgs if m.stats is not None]
    last = (trace or {}).get("stats") or (stats[-1] if stats else {})
    data = [_message(m) for m in msgs]
    return {
        **_summary(row),
        "messages": data,
        # the page of `messages`, as /messages gives it
        "has_more": more,
        "first_id": data[0]["seq"] if data else None,
        "last_id": data[-1]["seq"] if data else None,
        "prompt": {
            "system_prompt": settings.get("system_prompt"),
            "pinned": state["pinned"],
            "summary": state["summary"],
            "history": state["history"],
            "recalled_tokens": last.get("recalled_tokens", 0),
            # the last turn's recalled segments, with their scores (its trace; see /turns)
            "recalled": trace["recalled"] if trace is not None else None,
            "history_tokens": sum(s["tokens"] for s in state["history"]),
        },
        "archived": state["archive"],
        "settings": settings,
        "turn_stats": stats,
        "stats": doc["stats"],
    }
