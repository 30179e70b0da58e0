"""Process settings from the environment, and the live configuration shared through Redis."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.exceptions import ConfigError
from gateway.store import Store
from gateway.targets import Config, config_from_dict

log = logging.getLogger("gateway.settings")


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

    redis_url: str | None = None
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            redis_url=env.get("REDIS_URL") or None,
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
        )

    @property
    def spool_path(self) -> str:
        return self.spool_dir or os.path.join(self.data_dir, "spool")

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError(
                "is not set: point it at Redis (redis://host:6379/0), or use `gateway standalone`, "
                "which starts an embedded Redis",
                None,
                "REDIS_URL",
            )
        return self.redis_url


class LiveConfig:
    """The configuration every process shares, cached per process and reloaded by version.

    Processes keep the compiled Config in memory and compare versions: the ingest path reads the
    version inside its accept pipeline (no extra round trip), a worker once per job. The
    (version, config) pair is one attribute, so a reader never sees one without the other.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._current: tuple[int, Config] = (-1, Config())
        self.aliases = Config().alias_table()  # of the current configuration

    @property
    def version(self) -> int:
        return self._current[0]

    def snapshot(self) -> tuple[int, Config]:
        if self._current[0] < 0:
            self.refresh()
        return self._current

    def get(self) -> Config:
        return self.snapshot()[1]

    def refresh(self, seen_version: int | None = None) -> Config:
        """Reload from Redis if `seen_version` (or Redis' current one) differs from ours.

        A stored configuration this process cannot read (say, a key from a newer release during
        a rolling deploy) is logged and the last good one kept, so callbacks are still accepted.
        """
        if seen_version is not None and seen_version == self._current[0]:
            return self._current[1]
        with self._lock:
            version, data = self._store.load_config()
            return self.install(version, data)

    def install(self, version: int, data: dict[str, Any] | None) -> Config:
        """Use the configuration `data` of `version` (loaded by the caller, say asynchronously)."""
        if version != self._current[0]:
            try:
                # Validated when applied; environment variables are the worker's to check.
                config = config_from_dict(data) if data else Config()
            except ConfigError as exc:
                log.error("configuration version %d unreadable, keeping the last: %s", version, exc)
                config = self._current[1]
            self.aliases = config.alias_table()
            self._current = (version, config)
        return self._current[1]

    @property
    def current(self) -> Config:
        """The configuration in hand, without asking Redis."""
        return self._current[1]
