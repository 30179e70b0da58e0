"""The Starlette application: routes, lifespan, and the one place errors become responses."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from gateway import wiring
from gateway.admin.api import admin_api
from gateway.admin.dashboard import create_dashboard
from gateway.config.load import load_config
from gateway.events import INVITATION_ACCEPTED, INVITATION_CREATED, InvitationEvent
from gateway.exceptions import CallbackError, ConfigError, problem_document
from gateway.fastredis import FastRedis, ScriptClient, ScriptsViaRedisPy, script_client
from gateway.ingest.accept import MAX_BATCH, MAX_BATCH_WAITED, Accepter
from gateway.ingest.callback import Callback
from gateway.ingest.durable import DurabilityState, DurableScripts, check_server
from gateway.ingest.endpoint import ConfigCache, Ingest
from gateway.ingest.inspector import CallbackWriter, Inspector
from gateway.ingest.spool import Spool
from gateway.ingest.tokens import IngestAuth
from gateway.live import LiveConfig
from gateway.logs import ensure_logging
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import HEARTBEAT_SECONDS, IngestMetrics, flush_commands, render, spool_depth
from gateway.queue import enqueue_drain, make_queue
from gateway.settings import Durability, Settings
from gateway.store.callbacks import Kept
from gateway.store.codec import now_ms
from gateway.store.events import Store
from gateway.store.ingest import limit_fields
from gateway.store.ops import OpsKeys

log = logging.getLogger("gateway.app")

PROBLEM = "application/problem+json"
SPOOL_READY_MARGIN = 0.1  # /readyz fails once the spool has less than this share of its bound left


def problem(status: int, title: str, detail: str, field: str | None = None) -> Response:
    """An RFC 9457 problem document."""
    body = problem_document(status, title, detail, field)
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
    # scope["path"], not request.url: building the URL decodes the query string as UTF-8, and a
    # query of other bytes would turn this 404 or 405 into a 500.
    where = f"{request.method} {request.scope.get('path', '?')}"
    response = problem(exc.status_code, exc.detail, f"{where}: {exc.detail}")
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def apply_config_file(
    store: Store, path: str, environ: Mapping[str, str] | None = os.environ
) -> tuple[int, bool, int]:
    """Validate the TOML file and store it for every process.

    With `environ`, the targets' ${VARS} must be set in it; `None` checks the file's shape only
    (the web process: the targets' variables are the workers', who report them).
    """
    config = load_config(path, environ)
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
        if request.method != "GET" and request.method != "POST":
            # Starlette adds HEAD to a GET route; a HEAD (a link checker, a monitor) must not
            # store an invitation.
            raise HTTPException(405, headers={"Allow": "GET, POST"})
        return await ingest(request, event_type)

    return endpoint


@dataclass(frozen=True, slots=True)
class IngestParts:
    """What the ingest runs on; `gateway spool drain` builds the same to drain a spool."""

    redis: Redis  # sync: the configuration file at startup, RQ's enqueue (rare, in a thread)
    aio: aioredis.Redis  # async: the configuration, health, the spool drain's look
    fast: (
        FastRedis | ScriptsViaRedisPy
    )  # async: the accept step's one command per batch (gateway/fastredis.py)
    store: Store
    live: LiveConfig
    accepter: Accepter
    refresh_config: Callable[[], Awaitable[bool]]
    cache: ConfigCache  # the configuration's lookups per network, for the accept and the endpoint
    durability: DurabilityState  # GATEWAY_DURABILITY, and why it is not given now (if so)


def ingest_parts(settings: Settings, spool: Spool) -> IngestParts:
    retention = settings.retention_days * 86400
    redis = wiring.redis_client(settings)
    aio = wiring.aio_redis_client(settings)
    fast = script_client(wiring.redis_url(settings), aio, connect_timeout=2)
    store = wiring.store(settings, redis)
    live = LiveConfig(store)
    queue = make_queue(redis, settings.queue_name)

    async def refresh_config() -> bool:
        """Reload if the configuration changed; False also when Redis does not answer in time."""
        try:
            seen = await asyncio.wait_for(
                _get(aio, store.keys.config_version), settings.spool_after_ms / 1000
            )
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
        policy = cache.policy(live.current, event.network_id)
        if not (policy.guard or policy.limits or policy.allowed_prefixes):
            return {}  # limit_fields' answer for most networks, without its call (per callback)
        return limit_fields(event, policy, now)

    def deadlines() -> str:
        return cache.expiries(live.current)

    durability = DurabilityState(settings.durability_level, settings.durability_replicas)
    bound = settings.spool_after_ms / 1000
    # memory: the script call alone, as ever; otherwise the level's wait behind each one.
    scripts: ScriptClient = fast
    max_batch = MAX_BATCH
    if durability.level is not Durability.MEMORY:
        scripts = DurableScripts(fast, durability, bound)
        max_batch = MAX_BATCH_WAITED
    accepter = Accepter(
        scripts,
        settings.prefix,
        retention,
        spool,
        routes,
        limits,
        on_version,
        wake,
        dedupe_seconds=settings.dedupe_seconds,
        bound=bound,
        max_batch=max_batch,
        expiries=deadlines,
        callbacks=callbacks_kept(settings),
        ordering=lambda event: cache.ordering(live.current, event.type, event.network_id),
    )
    return IngestParts(redis, aio, fast, store, live, accepter, refresh_config, cache, durability)


def callbacks_kept(settings: Settings) -> Kept:
    """The callbacks inspector's bounds (GATEWAY_CALLBACKS_KEPT, GATEWAY_CALLBACKS_DAYS)."""
    return Kept(settings.callbacks_kept, settings.callbacks_days * 86_400_000)


def create_app(settings: Settings | None = None) -> IngestFastPath:
    """The ASGI application (uvicorn: `gateway.app:create_app --factory`)."""
    ensure_logging()
    settings = settings or Settings.from_env()
    spool = Spool(settings.spool_path, max_bytes=settings.spool_max_bytes)
    parts = ingest_parts(settings, spool)
    redis, aio, store, live, accepter = parts.redis, parts.aio, parts.store, parts.live, parts.accepter
    durability = parts.durability
    auth = IngestAuth(settings.open_ingest, settings.trusted_proxies, os.environ)
    ingest_metrics = IngestMetrics()
    # The callbacks inspector: rejected and spooled callbacks are written on a connection of
    # their own (gateway/ingest/inspector.py); taken ones by the ingest script.
    writer = inspector = None
    if settings.callbacks_kept > 0:
        side = script_client(wiring.redis_url(settings), aio, connect_timeout=2)
        writer = CallbackWriter(side, settings.prefix, callbacks_kept(settings), ingest_metrics.tally)
        inspector = Inspector(writer, parts.fast, settings.prefix)
    ingest = Ingest(
        live, accepter, settings.max_body, parts.refresh_config, auth, parts.cache, ingest_metrics, inspector
    )
    ops = OpsKeys(settings.prefix)
    tally = ingest_metrics.tally

    async def health(request: Request) -> Response:
        """The process is up (200 even without Redis: callbacks then go to the spool)."""
        try:
            async with asyncio.timeout(2):
                await aio.ping()
            redis_state = "ok"
        except Exception as exc:
            redis_state = f"unreachable ({type(exc).__name__})"
        if redis_state == "ok":
            with contextlib.suppress(Exception):
                await parts.refresh_config()  # the version just applied, not the last callback's
        return JSONResponse({"status": "ok", "redis": redis_state, "config_version": live.version})

    async def flush_metrics() -> None:
        """This process' counts into the Redis hash every process adds to (kept if Redis is away)."""
        data = tally.take()
        if not data:
            return
        try:
            async with aio.pipeline(transaction=False) as pipe:
                flush_commands(pipe, ops.metrics, data)
                await pipe.execute()
        except Exception:
            tally.put_back(data)
            raise

    async def check_durability(redis_answers: bool) -> bool:
        """Whether the level is given now: the server can give it, and the last wait confirmed."""
        if durability.level is Durability.MEMORY:
            return True
        if redis_answers:
            with contextlib.suppress(Exception):  # unreachable after all: the last answer stands
                async with asyncio.timeout(2):
                    durability.server_problem = await check_server(aio, durability.level, durability.replicas)
        return durability.ok

    async def ready(request: Request) -> Response:
        """For a load balancer: Redis answers, a worker is alive, the spool has room, and Redis gives
        GATEWAY_DURABILITY."""
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(2):
                async with aio.pipeline(transaction=False) as pipe:
                    pipe.ping()
                    ops.read_alive(pipe, now_ms(), HEARTBEAT_SECONDS * 1000)
                    _, alive = await pipe.execute()
            checks["redis"] = "ok"
            checks["workers"] = (
                f"{alive} alive" if alive else f"no worker has written a heartbeat in {HEARTBEAT_SECONDS} s"
            )
        except Exception as exc:
            checks["redis"] = f"unreachable ({type(exc).__name__})"
            checks["workers"] = "unknown (Redis unreachable)"
            alive = 0
        room = spool.max_bytes - spool.size()
        full = room < spool.max_bytes * SPOOL_READY_MARGIN
        checks["spool"] = f"{spool.size()} of {spool.max_bytes} bytes" + (" (full)" if full else "")
        durable = await check_durability(checks["redis"] == "ok")
        checks["durability"] = durability.level.value + (" (ok)" if durable else f": {durability.problem}")
        failed = [
            name
            for name, bad in (
                ("redis", checks["redis"] != "ok"),
                ("workers", not alive),
                ("spool", full),
                ("durability", not durable),
            )
            if bad
        ]
        body = {"status": "unavailable" if failed else "ok", "failed": failed, "checks": checks}
        return JSONResponse(body, status_code=503 if failed else 200)

    async def metrics(request: Request) -> Response:
        """Prometheus text: counters summed over every process through Redis, gauges read now."""
        now = now_ms()
        gauges: dict[str, float] = {}
        counts: Any = None
        held: dict[str, tuple[str, int]] = {}
        try:
            async with asyncio.timeout(3):
                await flush_metrics()  # this process' latest counts too
                async with aio.pipeline(transaction=False) as pipe:
                    ops.read_gauges(pipe, now, HEARTBEAT_SECONDS * 1000)
                    counts, due, later, dead, held_names, alive = await pipe.execute()
                names = sorted(_text(n) for n in held_names)
                if names:
                    async with aio.pipeline(transaction=False) as pipe:
                        ops.read_held(pipe, names)
                        raw = await pipe.execute()
                    for i, name in enumerate(names):
                        held[name] = (_text(raw[2 * i] or b"paused"), int(raw[2 * i + 1]))
            gauges.update(
                gateway_redis_up=1,
                gateway_queue_due=due,
                gateway_queue_scheduled=later,
                gateway_dead_letters=dead,
                gateway_targets_paused=len(names),
                gateway_workers_alive=alive,
            )
        except Exception:
            gauges["gateway_redis_up"] = 0
        files, size = await asyncio.to_thread(spool_depth, spool.directory)
        gauges.update(gateway_spool_files=files, gateway_spool_bytes=size)
        durable = await check_durability(gauges["gateway_redis_up"] == 1)
        body = render(counts, gauges, held, (durability.level.value, durable))
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        applier = None
        if settings.config_path:
            try:
                await run_in_threadpool(_apply_file, store, settings.config_path)
            except RedisError as exc:
                # Callbacks are spooled meanwhile; the file is applied once Redis answers.
                log.error(
                    "cannot apply %s: Redis does not answer (%s); spooling callbacks, and applying "
                    "the file once Redis is back",
                    settings.config_path,
                    type(exc).__name__,
                )
                applier = asyncio.create_task(_apply_when_back(store, settings.config_path))
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
        drainer = asyncio.create_task(_drain_after(applier, parts, accepter.drain_forever))
        # A token, limit or allowlist taken out of the file is gone within a second everywhere,
        # not only once this process next takes a callback.
        watcher = asyncio.create_task(_watch_config(aio, store.keys.config_changed, parts.refresh_config))
        data_watch = asyncio.create_task(_watch_data(store))
        flusher = asyncio.create_task(_every(1.0, flush_metrics))
        durability_watch = None
        if durability.level is not Durability.MEMORY:
            where = wiring.shown_url(settings)
            durability_watch = asyncio.create_task(_watch_durability(aio, durability, where))
        inspecting = asyncio.create_task(writer.run()) if writer is not None else None
        yield
        accepter.log_duplicates(again=False)  # the last summary, not a second later
        if writer is not None:
            await writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(flush_metrics(), 2)
        for task in (drainer, watcher, data_watch, flusher, applier, durability_watch, inspecting):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        spool.close()
        if writer is not None:
            await writer.client.aclose()
        await parts.fast.aclose()
        await aio.aclose()
        redis.close()

    routes_: list[BaseRoute] = []
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
    routes_.append(Route("/readyz", ready, methods=["GET"]))
    routes_.append(Route("/metrics", metrics, methods=["GET"]))
    routes_.append(Mount("/api/v1", app=admin_api(store, settings.queue_name, settings.public_url)))
    dashboard = create_dashboard(
        store, settings.queue_name, settings.trusted_proxies, public_url=settings.public_url
    )
    routes_.append(Mount("/dashboard", app=dashboard, name="dashboard"))
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
            path = scope["path"]
            # /invitation_created itself (the usual callback) without _ingest_path's call
            event_type = _EVENT_PATHS.get(path)
            token = None
            if event_type is None:
                event_type, token = _ingest_path(path)
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
        pipe.get(store.keys.config_version)
        pipe.get(store.keys.config)
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


def _apply_file(store: Store, path: str) -> None:
    version, changed, count = apply_config_file(store, path, None)
    log.info("configuration %s: %d targets, version %d", "loaded" if changed else "unchanged", count, version)


async def _drain_after(
    applier: asyncio.Task[None] | None, parts: IngestParts, drain: Callable[[], Awaitable[None]]
) -> None:
    """Drain the spool, once GATEWAY_CONFIG is applied (spooled callbacks are routed by it)."""
    if applier is not None:
        await asyncio.shield(applier)
        await parts.refresh_config()
    await drain()


async def _apply_when_back(store: Store, path: str, every: float = 0.5) -> None:
    """Apply GATEWAY_CONFIG once Redis answers (it did not at startup)."""
    while True:
        await asyncio.sleep(every)
        try:
            await run_in_threadpool(_apply_file, store, path)
            return
        except RedisError:
            continue
        except ConfigError as exc:
            log.error("cannot apply %s: %s", path, exc)
            return


async def _watch_data(store: Store, every: float = 5.0) -> None:
    """Notice a Redis that came back empty (Store.redis_lost_data logs it at ERROR)."""
    while True:
        with contextlib.suppress(RedisError):  # away: the accept path spools and logs that
            await run_in_threadpool(store.redis_lost_data)
        await asyncio.sleep(every)


async def _watch_durability(
    aio: aioredis.Redis, state: DurabilityState, where: str, every: float = 5.0
) -> None:
    """Whether the server can give GATEWAY_DURABILITY: at startup (as soon as Redis answers), then
    every few seconds; one ERROR line when it cannot, one WARNING line when it can again."""
    logged: str | None = None  # (/readyz and /metrics update the state too)
    while True:
        try:
            async with asyncio.timeout(2):
                problem = await check_server(aio, state.level, state.replicas)
        except Exception:  # noqa: S110 - unreachable: the accept path spools and logs that
            pass
        else:
            state.server_problem = problem
            if problem is not None and problem != logged:
                log.error(
                    "%s cannot be given by Redis at %s: %s; every callback is spooled (and answered 204) "
                    "until it can",
                    state.shown,
                    where,
                    problem,
                )
            elif problem is None and logged is not None:
                log.warning("%s: Redis at %s can give it again", state.shown, where)
            logged = problem
        await asyncio.sleep(every)


async def _every(seconds: float, job: Callable[[], Awaitable[None]]) -> None:
    """Run `job` every `seconds` until cancelled; a failure waits for the next turn."""
    while True:
        await asyncio.sleep(seconds)
        with contextlib.suppress(Exception):
            await job()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _get(aio: aioredis.Redis, key: str) -> bytes | str | None:
    value: bytes | str | None = await aio.get(key)
    return value
