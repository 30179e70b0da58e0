"""The one place that builds Redis clients (with their timeouts) and the Store, for every entry point.

`gateway web`, `gateway worker` and every operator command get their Redis client here, so a
timeout, TLS or Sentinel is set once. REDIS_URL takes:

    redis://[user:password@]host:6379/0              plain TCP
    rediss://user:password@host:6380/0               TLS (`?ssl_ca_certs=/path/ca.pem` for a private CA)
    unix:///run/redis.sock?db=0                      a local socket
    redis+sentinel://[user:password@]h1:26379,h2:26379/mymaster/0
    rediss+sentinel://...                            Sentinel, TLS to the sentinels and the master

Without REDIS_URL, a command finds the embedded Redis of a `gateway standalone` running on the
data directory (GATEWAY_DATA_DIR, default .gateway-data): it writes the URL to a file there.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis import Redis
from redis.connection import SSLConnection, parse_url

from gateway.embedded import running_standalone_url
from gateway.exceptions import ConfigError
from gateway.fastredis import FastRedis, ScriptsViaRedisPy
from gateway.settings import Settings, mask_url_password
from gateway.store import DeliveryQueue, Store

# redis-py 8's defaults are socket_timeout=5 and no connect timeout; a Redis that is away must
# fail a call within seconds (the web spools, the worker waits), never hang it.
SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
HEALTH_CHECK_INTERVAL = 30


def redis_url(settings: Settings) -> str:
    """REDIS_URL, or the embedded server of a running standalone; else a ConfigError saying what to do."""
    if settings.redis_url:
        return settings.redis_url.reveal()
    found = running_standalone_url(settings.data_dir)
    if found:
        return found
    raise ConfigError(
        f"is not set, and no `gateway standalone` is running on {os.path.abspath(settings.data_dir)}: "
        "set REDIS_URL (redis://host:6379/0), or start `gateway standalone` "
        "(GATEWAY_DATA_DIR chooses its data directory)",
        None,
        "REDIS_URL",
    )


def shown_url(settings: Settings) -> str:
    """The URL in use, its password masked (for logs)."""
    return mask_url_password(redis_url(settings))


def _timeouts(socket_timeout: float | None) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }


def redis_client(settings: Settings, socket_timeout: float | None = SOCKET_TIMEOUT) -> Redis:
    """A sync client (pooled) for REDIS_URL."""
    url = redis_url(settings)
    if "+sentinel://" in url:
        from redis.sentinel import Sentinel

        nodes, master, kwargs, sentinel_kwargs = _sentinel(url, socket_timeout)
        sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs, **kwargs)
        client: Redis = sentinel.master_for(master)
        return client
    return Redis.from_url(url, **_timeouts(socket_timeout))


def aio_redis_client(settings: Settings, socket_timeout: float | None = SOCKET_TIMEOUT) -> aioredis.Redis:
    """An asyncio client (pooled) for REDIS_URL."""
    url = redis_url(settings)
    if "+sentinel://" in url:
        from redis.asyncio.sentinel import Sentinel as AioSentinel

        nodes, master, kwargs, sentinel_kwargs = _sentinel(url, socket_timeout)
        sentinel = AioSentinel(nodes, sentinel_kwargs=sentinel_kwargs, **kwargs)
        client: aioredis.Redis = sentinel.master_for(master)
        return client
    return aioredis.Redis.from_url(url, **_timeouts(socket_timeout))


def store(settings: Settings, client: Redis | None = None) -> Store:
    """The Store on `client` (default: a new sync client)."""
    return Store(
        client if client is not None else redis_client(settings),
        prefix=settings.prefix,
        retention=settings.retention_days * 86400,
    )


def delivery_queue(
    settings: Settings,
    client: Redis | aioredis.Redis,
    scripts: FastRedis | ScriptsViaRedisPy | None = None,
    script_timeout: float = SOCKET_TIMEOUT,
) -> DeliveryQueue:
    """The delivery queue on `client`; with `scripts`, its hot scripts go through that client."""
    retention = settings.retention_days * 86400
    return DeliveryQueue(client, settings.prefix, retention, scripts=scripts, script_timeout=script_timeout)


def _sentinel(
    url: str, socket_timeout: float | None
) -> tuple[list[tuple[str, int]], str, dict[str, Any], dict[str, Any]]:
    """(sentinel nodes, master name, master connection kwargs, sentinel connection kwargs).

    The user and password of the URL are the master's (an ACL user); sentinels are asked with
    the same TLS setting and timeouts, and with `?sentinel_password=` when they need one.
    """
    parts = urlsplit(url)
    tls = parts.scheme.lower().startswith("rediss")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        nodes.append((host.strip("[]"), int(port or 26379)))
    segments = [s for s in parts.path.split("/") if s]
    master = unquote(segments[0])
    db = segments[1] if len(segments) > 1 else "0"
    query = parts.query
    sentinel_password = None
    if query:
        kept = []
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            if name == "sentinel_password":
                sentinel_password = unquote(value)
            else:
                kept.append(pair)
        query = "&".join(kept)
    # redis-py's own URL parser reads the credentials, the db and the ssl_* options.
    auth = f"{userinfo}@" if userinfo else ""
    fake = f"{'rediss' if tls else 'redis'}://{auth}sentinel-master/{db}" + (f"?{query}" if query else "")
    kwargs: dict[str, Any] = parse_url(fake)  # type: ignore[no-untyped-call]
    for key in ("host", "port", "path"):
        kwargs.pop(key, None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    kwargs.update(_timeouts(socket_timeout))
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
    }
    if tls:
        sentinel_kwargs["ssl"] = True
        for key, value in kwargs.items():
            if key.startswith("ssl_"):
                sentinel_kwargs[key] = value
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    return nodes, master, kwargs, sentinel_kwargs
