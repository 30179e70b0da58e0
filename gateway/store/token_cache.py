"""OAuth2 access tokens shared by every worker (gateway/delivery/oauth2.py).

One key per token endpoint, client id and scope, expiring shortly before the token does.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from redis import Redis

from gateway.store import lua
from gateway.store.keys import Keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis

FORGET_IF_SAME = lua.load("forget_if_same")


class TokenCache:
    """Access tokens shared by every worker; for a sync or an asyncio client, like DeliveryQueue."""

    def __init__(self, client: Redis | aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self._drop = client.register_script(FORGET_IF_SAME.text)

    def key(self, token_url: str, client_id: str, scope: str) -> str:
        # Hashed: the URL may carry a tenant, and key names are listed by any Redis client.
        digest = hashlib.sha256("\x00".join((token_url, client_id, scope)).encode()).hexdigest()[:32]
        return self.keys.oauth2(digest)

    def get(self, key: str) -> Any:
        return self.client.get(key)

    def put(self, key: str, token: str, ttl_ms: int) -> Any:
        return self.client.set(key, token, px=max(ttl_ms, 1))

    def drop(self, key: str, token: str) -> Any:
        """Forget `token`, unless another worker has already replaced it."""
        return self._drop(keys=[key], args=[token])
