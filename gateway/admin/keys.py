"""Admin API keys: an operator key sees every network, a provider key only the networks it names.

A key is `gwk_{id}_{secret}`: the id (12 hex characters) is public and names the key in lists
and logs; the secret is 32 random bytes. The whole key is shown once, when it is made, and only
its sha256 is stored (a key of 256 random bits needs no slow hash: there is nothing to guess),
compared in constant time. Revoked keys stay listed, refused.

`authenticate()` turns a presented key into a `Principal` (or None); `KeyAuthBackend` does the
same for a Starlette `AuthenticationMiddleware` (Bearer header), with the scopes
`authenticated`, `provider` (every key) and `operator` (keys for every network).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from gateway.admin import Invalid
from gateway.logs import short_id
from gateway.records import iso_ms
from gateway.store.events import Store

KEY_PREFIX = "gwk_"
_KEY = re.compile(r"gwk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_NETWORK = re.compile(r"[^\s*]{1,128}")
_NAME_MAX = 100
_TOUCH_EVERY_MS = 10_000  # last_used_at is written at most this often per key

OPERATOR_SCOPES = ("authenticated", "provider", "operator")
PROVIDER_SCOPES = ("authenticated", "provider")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, without its secret."""

    key_id: str
    name: str
    networks: frozenset[str] | None  # None: every network (an operator key)
    created_at: int  # ms
    last_used_at: int | None = None
    revoked_at: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_operator(self) -> bool:
        return self.networks is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.key_id,
            "name": self.name,
            "kind": "operator" if self.is_operator else "provider",
            "networks": None if self.networks is None else sorted(self.networks),
            "created_at": iso_ms(self.created_at),
            "last_used_at": iso_ms(self.last_used_at) if self.last_used_at else None,
            "revoked": self.revoked,
            "revoked_at": iso_ms(self.revoked_at) if self.revoked_at else None,
        }


class Principal(BaseUser):
    """Who is asking: the key's id and name, and the networks it may see (None: all)."""

    __slots__ = ("_acting", "key_id", "name", "networks")

    def __init__(
        self, key_id: str, name: str, networks: frozenset[str] | None, acting: str | None = None
    ) -> None:
        self.key_id = key_id
        self.name = name
        self.networks = networks
        self._acting = acting

    @property
    def acting(self) -> str:
        """How a change it makes is told (a paused target's reason, an alert): "through the API by
        NAME", or what the principal says of itself (the `gateway` command: "by hand")."""
        return self._acting or f"through the API by {self.name}"

    def __repr__(self) -> str:
        nets = "*" if self.networks is None else ",".join(sorted(self.networks))
        return f"Principal({self.key_id!r}, {self.name!r}, networks={nets})"

    @property
    def is_operator(self) -> bool:
        return self.networks is None

    @property
    def scopes(self) -> tuple[str, ...]:
        return OPERATOR_SCOPES if self.networks is None else PROVIDER_SCOPES

    def can_see(self, network_id: str) -> bool:
        """True if this key may read and change the data of `network_id`."""
        return self.networks is None or network_id in self.networks

    def can_see_target(self, target_networks: Iterable[str]) -> bool:
        """A target is a provider's only if every network it serves is one of the key's.

        A target serving "*", or another provider's network as well, belongs to the operator:
        showing it (its URL, its headers) would show another provider's configuration.
        """
        if self.networks is None:
            return True
        nets = list(target_networks)
        return bool(nets) and all(n != "*" and n in self.networks for n in nets)

    # starlette.authentication.BaseUser
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return self.key_id


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _store(store_or_redis: Store | Redis) -> Store:
    return store_or_redis if isinstance(store_or_redis, Store) else Store(store_or_redis)


def check_networks(networks: Iterable[str] | None) -> frozenset[str] | None:
    """The network list of a new key: None (operator) or a non-empty set of ids (no '*')."""
    if networks is None:
        return None
    nets = frozenset(networks)
    if not nets:
        raise Invalid(
            "a provider key needs at least one network id (an operator key: no networks)", "networks"
        )
    for n in sorted(nets):
        if not isinstance(n, str) or not _NETWORK.fullmatch(n):
            raise Invalid(f"network ids are 1-128 characters without spaces or '*', got {n!r}", "networks")
    return nets


def create_key(
    store_or_redis: Store | Redis, name: str, networks: Iterable[str] | None
) -> tuple[ApiKey, str]:
    """Make a key; returns it and its secret form `gwk_...`, which is never stored nor shown again.

    `networks` None makes an operator key (every network).
    """
    store = _store(store_or_redis)
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > _NAME_MAX or any(ord(c) < 32 for c in name):
        raise Invalid(f"a key name is 1-{_NAME_MAX} printable characters, got {name!r}", "name")
    nets = check_networks(networks)
    key_id = short_id()
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    now = int(time.time() * 1000)
    key = ApiKey(key_id, name, nets, now)
    with store.redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            store.keys.api_key(key_id),
            mapping={
                "name": name,
                "networks": "*" if nets is None else json.dumps(sorted(nets)),
                "hash": _hash(secret),
                "created_at": now,
            },
        )
        pipe.zadd(store.keys.api_keys, {key_id: now})
        pipe.execute()
    return key, secret


def _from_hash(key_id: str, raw: Mapping[Any, Any]) -> ApiKey:
    data = {_text(k): _text(v) for k, v in raw.items()}
    nets = data.get("networks", "*")
    return ApiKey(
        key_id=key_id,
        name=data.get("name", ""),
        networks=None if nets == "*" else frozenset(json.loads(nets)),
        created_at=int(data.get("created_at", 0)),
        last_used_at=int(data["last_used_at"]) if data.get("last_used_at") else None,
        revoked_at=int(data["revoked_at"]) if data.get("revoked_at") else None,
    )


def list_keys(store_or_redis: Store | Redis) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    store = _store(store_or_redis)
    ids = [_text(i) for i in store.redis.zrange(store.keys.api_keys, 0, -1)]
    with store.redis.pipeline(transaction=False) as pipe:
        for key_id in ids:
            pipe.hgetall(store.keys.api_key(key_id))
        raws = pipe.execute()
    return [_from_hash(key_id, raw) for key_id, raw in zip(ids, raws, strict=True) if raw]


def get_key(store_or_redis: Store | Redis, key_id: str) -> ApiKey | None:
    store = _store(store_or_redis)
    if not _KEY_ID.fullmatch(key_id):
        return None
    raw = store.redis.hgetall(store.keys.api_key(key_id))
    return _from_hash(key_id, raw) if raw else None


def revoke_key(store_or_redis: Store | Redis, key_id: str) -> ApiKey | None:
    """Revoke a key (refused from the next request on); None if there is no such key.

    Revoking a revoked key keeps its first revocation time.
    """
    store = _store(store_or_redis)
    if not _KEY_ID.fullmatch(key_id):
        return None
    hk = store.keys.api_key(key_id)
    if not store.redis.exists(hk):
        return None
    store.redis.hsetnx(hk, "revoked_at", int(time.time() * 1000))
    return get_key(store, key_id)


def authenticate(store_or_redis: Store | Redis, presented_key: str) -> Principal | None:
    """The Principal of a valid, unrevoked key; None for anything else."""
    store = _store(store_or_redis)
    match = _KEY.fullmatch(presented_key.strip()) if isinstance(presented_key, str) else None
    if match is None:
        return None
    key_id = match[1]
    hk = store.keys.api_key(key_id)
    raw = store.redis.hmget(hk, ["hash", "name", "networks", "revoked_at", "last_used_at"])
    stored_hash, name, nets, revoked_at, last_used = (_text(v) if v else None for v in raw)
    if stored_hash is None or not hmac.compare_digest(stored_hash, _hash(presented_key.strip())):
        return None
    if revoked_at:
        return None
    now = int(time.time() * 1000)
    if not last_used or now - int(last_used) >= _TOUCH_EVERY_MS:
        store.redis.hset(hk, "last_used_at", now)
    networks = None if nets in (None, "*") else frozenset(json.loads(nets))
    return Principal(key_id, name or "", networks)


class KeyAuthBackend(AuthenticationBackend):
    """`Authorization: Bearer gwk_...` for Starlette's AuthenticationMiddleware.

    No header: anonymous (the endpoints' `requires` answers 401). A malformed header or an
    unknown or revoked key: AuthenticationError (the middleware's on_error answers 401).
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        header = conn.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("the Authorization header must be 'Bearer gwk_...'")
        principal = await run_in_threadpool(authenticate, self.store, token)
        if principal is None:
            raise AuthenticationError("unknown or revoked key")
        return AuthCredentials(list(principal.scopes)), principal
