"""Process settings from the environment, and nothing else (no Redis, no files).

Secrets are wrapped: `Settings.redis_url` is a `RedisURL`, whose repr and str show the URL with
its password masked, so no repr of the settings and no log line carries it. The live
configuration shared through Redis is `gateway.live.LiveConfig`; the Redis client is built in
`gateway.wiring`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from gateway.exceptions import ConfigError

# What REDIS_URL may start with (redis-py's from_url, and Sentinel as `gateway.wiring` reads it).
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
REDIS_URL_FORMS = (
    "redis://[user:password@]host:6379/0, rediss://... for TLS, "
    "redis+sentinel://host:26379,host2:26379/mymaster/0 for Sentinel"
)


class Secret:
    """A value no repr, str or format shows; `reveal()` gives it to the one place that uses it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def shown(self) -> str:
        return "**********"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shown()!r})"

    def __str__(self) -> str:
        return self.shown()

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError(f"a {type(self).__name__} is not pickled")


class RedisURL(Secret):
    """REDIS_URL: shown (repr, str, logs) with its password masked."""

    __slots__ = ()

    def shown(self) -> str:
        return mask_url_password(self._value)


def mask_url_password(url: str) -> str:
    """`scheme://user:***@host...`: the URL without its password (for logs and errors)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{masked}@{hostpart}"


def parse_redis_url(raw: str) -> RedisURL:
    """Check the form of REDIS_URL (a one-line ConfigError naming the expected form)."""
    text = raw.strip()
    shown = mask_url_password(text)
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme not in REDIS_SCHEMES:
        what = f"scheme {scheme!r} is not supported" if scheme else "has no scheme"
        raise ConfigError(f"{shown!r} {what}: expected {REDIS_URL_FORMS}", None, "REDIS_URL")
    if scheme.endswith("+sentinel"):
        parts = urlsplit(text)
        if not parts.netloc.rpartition("@")[2] or not parts.path.strip("/"):
            raise ConfigError(
                f"{shown!r}: a Sentinel URL names its sentinels and the master, "
                "like redis+sentinel://host:26379,host2:26379/mymaster/0",
                None,
                "REDIS_URL",
            )
    elif scheme != "unix" and not urlsplit(text).hostname:
        raise ConfigError(f"{shown!r} names no host: expected {REDIS_URL_FORMS}", None, "REDIS_URL")
    return RedisURL(text)


class Durability(StrEnum):
    """What a 204 promises (GATEWAY_DURABILITY; README, "What a 204 promises")."""

    MEMORY = "memory"  # in Redis' memory (and its append-only file, fsync'd as Redis is set up)
    DISK = "disk"  # fsync'd to Redis' append-only file: WAITAOF 1 0 after each batch
    REPLICA = "replica"  # acknowledged by GATEWAY_DURABILITY_REPLICAS replicas: WAIT N after each batch


def _durability(environ: Mapping[str, str]) -> Durability | None:
    raw = environ.get("GATEWAY_DURABILITY", "").strip().lower()
    if not raw:
        return None
    try:
        return Durability(raw)
    except ValueError:
        levels = ", ".join(d.value for d in Durability)
        raise ConfigError(f"must be one of {levels}, got {raw!r}", None, "GATEWAY_DURABILITY") from None


def _appendfsync(environ: Mapping[str, str]) -> str | None:
    raw = environ.get("GATEWAY_EMBEDDED_APPENDFSYNC", "").strip().lower()
    if raw and raw not in ("always", "everysec"):
        raise ConfigError(f"must be always or everysec, got {raw!r}", None, "GATEWAY_EMBEDDED_APPENDFSYNC")
    return raw or None


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"must be a whole number, got {raw!r}", None, name) from None
    if value < minimum:
        raise ConfigError(f"must be at least {minimum}, got {value}", None, name)
    return value


def _cidrs(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in environ.get(name, "").split(",") if x.strip())
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{item!r} is not an IP network like 10.0.0.0/8", None, name) from None
    return items


def _bool(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"must be true or false, got {raw!r}", None, name)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything an operator sets through environment variables (see the README)."""

    redis_url: RedisURL | None = None  # masked in repr and str: `.reveal()` in gateway.wiring only
    config_path: str | None = None
    prefix: str = "gw"
    queue_name: str = "gateway-deliveries"
    max_body: int = 64 * 1024
    retention_days: int = 30
    allow_private_targets: bool = False
    data_dir: str = ".gateway-data"
    worker_concurrency: int = 64
    lease_seconds: int = 90  # a delivery claimed by a worker that died is due again after this
    dedupe_seconds: int = 600  # the same callback again within this window is not delivered again
    spool_dir: str | None = None  # default: {data_dir}/spool
    spool_max_bytes: int = 64 * 1024 * 1024
    spool_after_ms: int = 1000  # Redis slower than this: the callback goes to the spool
    open_ingest: bool = False  # callbacks without a token are accepted (a warning at startup)
    trusted_proxies: tuple[str, ...] = ()  # X-Forwarded-For is read only from these
    # None: the command's default (memory for `web`; `standalone` passes its own to its children)
    durability: Durability | None = None
    durability_replicas: int = 1  # for Durability.REPLICA
    # The embedded Redis' fsync policy (`standalone`); None: `always` unless durability is memory
    embedded_appendfsync: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            redis_url=parse_redis_url(env["REDIS_URL"]) if env.get("REDIS_URL", "").strip() else None,
            config_path=env.get("GATEWAY_CONFIG") or None,
            prefix=env.get("GATEWAY_PREFIX") or "gw",
            queue_name=env.get("GATEWAY_QUEUE") or "gateway-deliveries",
            max_body=_int(env, "GATEWAY_MAX_BODY", 64 * 1024),
            retention_days=_int(env, "GATEWAY_RETENTION_DAYS", 30),
            allow_private_targets=_bool(env, "GATEWAY_ALLOW_PRIVATE_TARGETS"),
            data_dir=env.get("GATEWAY_DATA_DIR") or ".gateway-data",
            worker_concurrency=_int(env, "GATEWAY_WORKER_CONCURRENCY", 64),
            lease_seconds=_int(env, "GATEWAY_LEASE_SECONDS", 90, minimum=5),
            dedupe_seconds=_int(env, "GATEWAY_DEDUPE_SECONDS", 600, minimum=0),
            spool_dir=env.get("GATEWAY_SPOOL_DIR") or None,
            spool_max_bytes=_int(env, "GATEWAY_SPOOL_MAX_BYTES", 64 * 1024 * 1024),
            spool_after_ms=_int(env, "GATEWAY_SPOOL_AFTER_MS", 1000, minimum=10),
            open_ingest=_bool(env, "GATEWAY_OPEN_INGEST"),
            trusted_proxies=_cidrs(env, "GATEWAY_TRUSTED_PROXIES"),
            durability=_durability(env),
            durability_replicas=_int(env, "GATEWAY_DURABILITY_REPLICAS", 1),
            embedded_appendfsync=_appendfsync(env),
        )

    @property
    def durability_level(self) -> Durability:
        """GATEWAY_DURABILITY, memory when unset."""
        return self.durability or Durability.MEMORY

    @property
    def spool_path(self) -> str:
        return self.spool_dir or os.path.join(self.data_dir, "spool")
