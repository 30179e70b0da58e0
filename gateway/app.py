"""The Starlette application: routes, lifespan, and the one place errors become responses."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import Redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.events import INVITATION_ACCEPTED, INVITATION_CREATED, InvitationEvent
from gateway.exceptions import CallbackError, ConfigError
from gateway.fastredis import FastRedis
from gateway.ingest.accept import Accepter
from gateway.ingest.endpoint import Callback, ConfigCache, Ingest
from gateway.ingest.spool import Spool
from gateway.ingest.tokens import IngestAuth
from gateway.queue import enqueue_drain, make_queue
from gateway.settings import LiveConfig, Settings
from gateway.store import Store, limit_fields
from gateway.targets import load_config

log = logging.getLogger("gateway.app")

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, field: str | None = None) -> Response:
    """An RFC 9457 problem document."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if field is not None:
        body["field"] = field
        body["invalid-params"] = [{"name": field, "reason": detail}]
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM)


async def callback_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CallbackError)
    response = problem(exc.status_code, exc.title, exc.detail, exc.field)
    if exc.status_code == 503:
        response.headers["Retry-After"] = "5"
    elif exc.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="invitation-gateway"'
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = problem(exc.status_code, exc.detail, f"{request.method} {request.url.path}: {exc.detail}")
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def apply_config_file(store: Store, path: str) -> tuple[int, bool, int]:
    """Validate the TOML file (environment variables included) and store it for every process."""
    config = load_config(path, os.environ)
    for target in config.targets:
        # An event must outlive its last retry, or that retry finds nothing to send.
        span = sum(target.retry) + target.timeout * (len(target.retry) + 1)
        if span * 1.1 >= store.retention:
            raise ConfigError(
                f"the retry schedule spans {span / 86400:.1f} days with jitter, past the "
                f"{store.retention / 86400:g}-day retention (GATEWAY_RETENTION_DAYS)",
                target.name,
                "retry",
            )
    version, changed = store.save_config(config.to_dict())
    return version, changed, len(config.targets)


def _endpoint(ingest: Ingest, event_type: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await ingest(request, event_type)

    return endpoint


@dataclass(frozen=True, slots=True)
class IngestParts:
    """What the ingest runs on; `gateway spool drain` builds the same to drain a spool."""

    redis: Redis  # sync: the configuration file at startup, RQ's enqueue (rare, in a thread)
    aio: aioredis.Redis  # async: the configuration, health, the spool drain's look
    fast: FastRedis  # async: the accept step's one command per batch (gateway/fastredis.py)
    store: Store
    live: LiveConfig
    accepter: Accepter
    refresh_config: Callable[[], Awaitable[bool]]
    cache: ConfigCache  # the configuration's lookups per network, for the accept and the endpoint


def ingest_parts(settings: Settings, spool: Spool) -> IngestParts:
    url = settings.require_redis_url()
    retention = settings.retention_days * 86400
    redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30)
    aio = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)
    fast = FastRedis(url, connect_timeout=2)
    store = Store(redis, prefix=settings.prefix, retention=retention)
    live = LiveConfig(store)
    queue = make_queue(redis, settings.queue_name)

    async def refresh_config() -> bool:
        """Reload if the configuration changed; False also when Redis does not answer in time."""
        try:
            seen = await asyncio.wait_for(_get(aio, store.config_version_key), settings.spool_after_ms / 1000)
            return await on_version(int(seen or 0))
        except Exception:
            return False

    async def on_version(version: int) -> bool:
        if version == live.version:
            return False
        seen, data = await _load_config(aio, store)
        live.install(seen, data)
        return True

    cache = ConfigCache()

    def routes(event: InvitationEvent) -> list[str]:
        return [t.name for t in live.current.routes(event.type, event.network_id)]

    async def wake() -> None:
        try:
            await asyncio.to_thread(enqueue_drain, queue)
        except Exception:
            # The deliveries are stored: every worker's ticker finds them within seconds.
            log.warning("no drain job queued (Redis?); the workers' ticker will find the deliveries")

    def limits(event: InvitationEvent, now: int) -> dict[str, Any]:
        return limit_fields(event, cache.policy(live.current, event.network_id), now)

    accepter = Accepter(
        fast,
        settings.prefix,
        retention,
        spool,
        routes,
        limits,
        on_version,
        wake,
        dedupe_seconds=settings.dedupe_seconds,
        bound=settings.spool_after_ms / 1000,
    )
    return IngestParts(redis, aio, fast, store, live, accepter, refresh_config, cache)


def create_app(settings: Settings | None = None) -> IngestFastPath:
    """The ASGI application (uvicorn: `gateway.app:create_app --factory`)."""
    settings = settings or Settings.from_env()
    spool = Spool(settings.spool_path, max_bytes=settings.spool_max_bytes)
    parts = ingest_parts(settings, spool)
    redis, aio, store, live, accepter = parts.redis, parts.aio, parts.store, parts.live, parts.accepter
    auth = IngestAuth(settings.open_ingest, settings.trusted_proxies, os.environ)
    ingest = Ingest(live, accepter, settings.max_body, parts.refresh_config, auth, parts.cache)

    async def health(request: Request) -> Response:
        try:
            await aio.ping()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "config_version": live.version})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.config_path:
            version, changed, count = await run_in_threadpool(apply_config_file, store, settings.config_path)
            log.info(
                "configuration %s: %d targets, version %d",
                "loaded" if changed else "unchanged",
                count,
                version,
            )
        try:
            live.install(*await _load_config(aio, store))
        except Exception as exc:
            # Redis is down at startup: callbacks are spooled, and the configuration is loaded
            # with the first batch that reaches Redis.
            log.error(
                "cannot load the configuration from Redis (%s); spooling until it answers", type(exc).__name__
            )
        if settings.open_ingest:
            log.warning("GATEWAY_OPEN_INGEST is set: callbacks without a token are accepted from anyone")
        # Everything built so far lives as long as the process: keep the cycle collector off it,
        # and let it run less often (every callback allocates, few make cycles).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        drainer = asyncio.create_task(accepter.drain_forever())
        # A token, limit or allowlist taken out of the file is gone within a second everywhere,
        # not only once this process next takes a callback.
        watcher = asyncio.create_task(_watch_config(aio, store.config_channel, parts.refresh_config))
        yield
        for task in (drainer, watcher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        spool.close()
        await parts.fast.aclose()
        await aio.aclose()
        redis.close()

    routes_ = []
    for event_type in (INVITATION_CREATED, INVITATION_ACCEPTED):
        endpoint = _endpoint(ingest, event_type)
        # The URL is all that tells the two events apart (the payloads are the same).
        # With the ingest token as a path segment: the Acrobits portal takes only a URL.
        for path in (
            f"/{event_type}",
            f"/{event_type}/",
            f"/{event_type}/{{token}}",
            f"/{event_type}/{{token}}/",
        ):
            routes_.append(Route(path, endpoint, methods=["GET", "POST"]))
    routes_.append(Route("/healthz", health, methods=["GET"]))
    app = Starlette(
        routes=routes_,
        lifespan=lifespan,
        exception_handlers={CallbackError: callback_error, HTTPException: http_error},
    )
    return IngestFastPath(app, ingest)


class IngestFastPath:
    """The two callback paths straight to the ingest; everything else through Starlette.

    A callback is the hot path: Starlette's router and its two exception middlewares cost about
    as much CPU per request as uvicorn itself (bench/README.md). The same `Ingest` and the same
    error mapping (`callback_error`) answer here as under the Starlette routes, which stay for
    anything this does not take (other methods get Starlette's 405, in the same problem shape).
    """

    def __init__(self, app: Starlette, ingest: Ingest) -> None:
        self.app = app
        self.ingest = ingest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "POST"):
            event_type, token = _ingest_path(scope["path"])
            if event_type is not None:
                try:
                    await self.ingest.take(Callback(scope, receive, token), event_type)
                except CallbackError as exc:
                    response = await callback_error(Request(scope), exc)
                    await response(scope, receive, send)
                    return
                # What Starlette's Response(status_code=204) sends, without building one.
                await send(_NO_CONTENT_START)
                await send(_NO_CONTENT_BODY)
                return
        await self.app(scope, receive, send)


_NO_CONTENT_START = {"type": "http.response.start", "status": 204, "headers": []}
_NO_CONTENT_BODY = {"type": "http.response.body", "body": b""}
_EVENT_PATHS = {f"/{t}": t for t in (INVITATION_CREATED, INVITATION_ACCEPTED)}


def _ingest_path(path: str) -> tuple[str | None, str | None]:
    """(event type, token) of /invitation_created[/TOKEN][/], else (None, None)."""
    path = path.removesuffix("/") if len(path) > 1 else path
    event_type = _EVENT_PATHS.get(path)
    if event_type is not None:
        return event_type, None
    head, _, token = path.rpartition("/")
    event_type = _EVENT_PATHS.get(head)
    if event_type is not None and token:
        return event_type, token
    return None, None


async def _load_config(aio: aioredis.Redis, store: Store) -> tuple[int, dict[str, Any] | None]:
    async with aio.pipeline(transaction=True) as pipe:
        pipe.get(store.config_version_key)
        pipe.get(store.config_key)
        version, blob = await pipe.execute()
    return int(version or 0), (json.loads(blob) if blob else None)


async def _watch_config(
    aio: aioredis.Redis, channel: str, refresh: Callable[[], Awaitable[bool]], every: float = 1.0
) -> None:
    """Reload as soon as `targets apply` (or the API) announces a change; look every second too.

    The announcement makes a token taken out of the file refused by the very next callback in
    every process; the look covers an announcement missed while the subscription reconnected.
    """
    while True:
        try:
            async with aio.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                await refresh()  # whatever changed while not subscribed
                while True:
                    # A message, or `every` seconds without one: look either way.
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=every)
                    await refresh()
        except asyncio.CancelledError:
            raise
        except Exception:
            await asyncio.sleep(every)  # Redis away: the accept path spools and logs that


async def _get(aio: aioredis.Redis, key: str) -> bytes | str | None:
    value: bytes | str | None = await aio.get(key)
    return value
