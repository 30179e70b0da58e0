"""The Starlette application: routes, lifespan, and the one place errors become responses."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.events import INVITATION_ACCEPTED, INVITATION_CREATED
from gateway.exceptions import CallbackError, ConfigError
from gateway.ingest import Ingest
from gateway.queue import make_queue
from gateway.settings import LiveConfig, Settings
from gateway.store import Store
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


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI application (uvicorn: `gateway.app:create_app --factory`)."""
    settings = settings or Settings.from_env()
    redis = Redis.from_url(
        settings.require_redis_url(), socket_timeout=5, socket_connect_timeout=3, health_check_interval=30
    )
    store = Store(redis, prefix=settings.prefix, retention=settings.retention_days * 86400)
    live = LiveConfig(store)
    ingest = Ingest(store, make_queue(redis, settings.queue_name), live, settings.max_body)

    async def health(request: Request) -> Response:
        try:
            await run_in_threadpool(redis.ping)
        except RedisError as exc:
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
        yield
        redis.close()

    routes = []
    for event_type in (INVITATION_CREATED, INVITATION_ACCEPTED):
        endpoint = _endpoint(ingest, event_type)
        # The URL is all that tells the two events apart (the payloads are the same).
        for path in (f"/{event_type}", f"/{event_type}/"):
            routes.append(Route(path, endpoint, methods=["GET", "POST"]))
    routes.append(Route("/healthz", health, methods=["GET"]))
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={CallbackError: callback_error, HTTPException: http_error},
    )
