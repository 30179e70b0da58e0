"""OAuth2 client credentials for targets (RFC 6749 section 4.4): no RQ, no Starlette.

A target with `oauth2 = {token_url, client_id, client_secret[, scope]}` is sent with
`Authorization: Bearer <token>`. The token is fetched from the token endpoint (POST
`grant_type=client_credentials`, HTTP Basic client_id:client_secret) through the engine's own
Sender (same address policy, proxy and timeout as the target), and kept in Redis for every
worker until shortly before it expires (`expires_in`, 3600 s when the answer has none), and in
this process' memory for as long. Concurrent deliveries of one process wait for one fetch. When
a target answers 401 the engine asks for a fresh token once (`refresh`), unless another worker
has already replaced the rejected one.

The client secret and the tokens are never logged, recorded or put in an error message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import quote

from gateway.config.targets import Target
from gateway.delivery.request import OutboundRequest, Response, proxy_for
from gateway.delivery.sender import SendError
from gateway.store.token_cache import TokenCache
from gateway.templating import Template

log = logging.getLogger("gateway.delivery")

DEFAULT_LIFETIME = 3600.0  # seconds, for an answer without expires_in
EARLY = 60.0  # a token is renewed this long before it expires (a tenth of a short lifetime)
TOKEN_RESPONSE_CAP = 65536  # bytes read of the token endpoint's answer (JWTs can be long)

Send = Callable[[OutboundRequest], Awaitable[Response]]


class TokenError(Exception):
    """No token could be had; `reason` is safe to record (no secret, no token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenSource:
    """Tokens per (token endpoint, client id, scope), shared through Redis by every worker."""

    def __init__(self, cache: TokenCache, send: Send, clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.send = send
        self.clock = clock
        self.fetches = 0  # token requests this process made (for tests and logs)
        self._memory: dict[str, tuple[str, float]] = {}  # key -> (token, expires at)
        self._locks: dict[str, asyncio.Lock] = {}

    async def token(self, target: Target, environ: Mapping[str, str]) -> str:
        """A token believed valid: from memory, else Redis, else the token endpoint."""
        key, parts = self._parts(target, environ)
        got = self._memory.get(key)
        if got is not None and got[1] > self.clock():
            return got[0]
        async with self._lock(key):
            got = self._memory.get(key)
            if got is not None and got[1] > self.clock():
                return got[0]
            return await self._shared_or_new(key, target, parts, environ, stale=None)

    async def refresh(self, target: Target, environ: Mapping[str, str], stale: str) -> str:
        """A token other than `stale`, which the target refused (401)."""
        key, parts = self._parts(target, environ)
        async with self._lock(key):
            got = self._memory.get(key)
            if got is not None and got[0] != stale and got[1] > self.clock():
                return got[0]  # another delivery of this process renewed it meanwhile
            self._memory.pop(key, None)
            return await self._shared_or_new(key, target, parts, environ, stale=stale)

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _parts(self, target: Target, environ: Mapping[str, str]) -> tuple[str, tuple[str, str, str, str]]:
        assert target.oauth2 is not None
        o = target.oauth2
        # Raises ConfigError for a ${VAR} missing on this worker (recorded, retried).
        url, client_id, secret = (Template.parse(t).render({}, str, environ) for t in o.templates()[:3])
        scope = Template.parse(o.scope).render({}, str, environ) if o.scope else ""
        return self.cache.key(url, client_id, scope), (url, client_id, secret, scope)

    async def _shared_or_new(
        self,
        key: str,
        target: Target,
        parts: tuple[str, str, str, str],
        environ: Mapping[str, str],
        stale: str | None,
    ) -> str:
        try:
            raw = await self.cache.get(key)
        except Exception:
            raw = None  # Redis trouble: fetch one for this process rather than fail the delivery
        if raw is not None:
            try:
                entry = json.loads(raw)
                token, expires = str(entry["token"]), float(entry["expires"])
            except (ValueError, KeyError, TypeError):
                token, expires = "", 0.0
            if token and token != stale and expires > self.clock():
                self._memory[key] = (token, expires)
                return token
            if token == stale:
                try:
                    await self.cache.drop(key, raw.decode() if isinstance(raw, bytes) else raw)
                except Exception as exc:  # it is replaced below anyway
                    log.debug("could not drop a refused OAuth2 token: %s", type(exc).__name__)
        token, lifetime = await self._fetch(target, parts, environ)
        expires = self.clock() + lifetime - min(EARLY, lifetime / 10)
        try:
            value = json.dumps({"token": token, "expires": expires})
            await self.cache.put(key, value, int((expires - self.clock()) * 1000))
        except Exception as exc:  # kept in memory: the other workers fetch their own
            log.warning("could not share an OAuth2 token in Redis: %s", type(exc).__name__)
        self._memory[key] = (token, expires)
        return token

    async def _fetch(
        self, target: Target, parts: tuple[str, str, str, str], environ: Mapping[str, str]
    ) -> tuple[str, float]:
        url, client_id, secret, scope = parts
        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        body = "grant_type=client_credentials" + (f"&scope={quote(scope, safe='')}" if scope else "")
        request = OutboundRequest(
            "POST",
            url,
            (
                ("Authorization", f"Basic {basic}"),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Accept", "application/json"),
            ),
            body.encode(),
            target.timeout,
            proxy_for(target, environ),
            response_cap=TOKEN_RESPONSE_CAP,
        )
        self.fetches += 1
        try:
            response = await self.send(request)
        except SendError as exc:
            raise TokenError(f"OAuth2 token endpoint: {exc.reason}") from None
        answer: object = None
        with contextlib.suppress(ValueError):
            answer = json.loads(response.body)
        if not 200 <= response.status < 300:
            code = answer.get("error") if isinstance(answer, dict) else None
            detail = f" ({code})" if isinstance(code, str) and code.isascii() and len(code) <= 64 else ""
            raise TokenError(f"OAuth2 token endpoint answered HTTP {response.status}{detail}")
        if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            raise TokenError("OAuth2 token endpoint answered without an access_token")
        token = answer["access_token"]
        if not token or any(not " " < c <= "~" for c in token):
            raise TokenError("OAuth2 token endpoint answered an access_token that cannot go in a header")
        lifetime = answer.get("expires_in", DEFAULT_LIFETIME)
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_LIFETIME
        return token, float(lifetime)
