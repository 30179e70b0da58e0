"""Lookups: fields the callback lacks, fetched from the provider's own service (no RQ, no Starlette).

A callback carries a phone number and a SIP username; most invitation APIs want an email or a
name. A target's `[targets.lookups.NAME]` is an HTTP request templated from the event (the same
templating, escaping and address policy as a target: it is rendered by `build_request` and sent
by the same `Sender`), whose JSON answer is read by simple paths (`contact.email`,
`results.0.name`) into `%NAME.field%` values for the target's templates.

Answers are cached in Redis for the lookup's `cache` seconds, shared by every worker (the key is
a digest of the rendered request: it holds a phone number), and filed under the event's numbers
for an erasure (gateway/store/erasure.py). What can go wrong, and what the
delivery does about it:

- the lookup cannot be made or answers an error (connection refused, timeout, 5xx, a body that
  is not JSON): `LookupFailure` with outcome RETRYING, a retryable delivery failure like any
  other (the attempt records why); never a lost event;
- "not found" (a status in `not_found`, 404 by default, or a path with no value): as the lookup's
  `on_not_found` says: retry (the default), skip (the target, for this event, recorded with the
  reason) or fail (a dead letter, replayable).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from gateway.config.load import MAX_LOOKUP_CACHE
from gateway.config.targets import Lookup, Target
from gateway.delivery.request import OutboundRequest, Response, build_request
from gateway.delivery.sender import SendError
from gateway.events import InvitationEvent
from gateway.exceptions import ConfigError
from gateway.records import Outcome
from gateway.store.erasure import index_lookup
from gateway.store.keys import Keys

log = logging.getLogger("gateway.lookups")

ANSWER_CAP = 64 * 1024  # bytes of a lookup's answer that are read (the JSON must fit)


class LookupFailure(Exception):
    """A lookup gave no values; `outcome` is RETRYING, SKIPPED or FAILED for the delivery."""

    def __init__(self, reason: str, outcome: Outcome) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


def read_path(document: object, path: str) -> str | None:
    """The scalar at a dotted path (`contact.email`, `results.0.email`), as text; None if absent.

    Numbers index lists; an empty string, null, a table or a list is "no value".
    """
    node = document
    for part in path.split("."):
        if isinstance(node, dict):
            if part not in node:
                return None
            node = node[part]
        elif isinstance(node, list) and part.isdigit():
            index = int(part)
            if index >= len(node):
                return None
            node = node[index]
        else:
            return None
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, int | float):
        return str(node)
    if isinstance(node, str) and node != "":
        return node
    return None


def lookup_request(lookup: Lookup, event: InvitationEvent, environ: Mapping[str, str]) -> OutboundRequest:
    """The lookup's request for this event (ConfigError for a ${VAR} not set here)."""
    request = build_request(lookup.request, event, environ)
    # The Idempotency-Key is the delivery's business, not the lookup service's.
    headers = tuple((k, v) for k, v in request.headers if k != "Idempotency-Key")
    return replace(request, headers=headers, response_cap=ANSWER_CAP)


class Lookups:
    """Runs a target's lookups for an event; `send` is the Sender's (its address policy applies).

    `client` is a Redis client (asyncio) for the shared cache, or None for no cache.
    """

    def __init__(
        self,
        send: Callable[[OutboundRequest], Awaitable[Response]],
        environ: Mapping[str, str],
        client: Any = None,
        prefix: str = "gw",
    ) -> None:
        self.send = send
        self.environ = environ
        self.client = client
        self.prefix = prefix
        self.keys = Keys(prefix)

    async def values(self, target: Target, event: InvitationEvent) -> dict[str, str]:
        """Every `%lookup.field%` value of the target for this event; raises LookupFailure."""
        found: dict[str, str] = {}
        for lookup in target.lookups:
            found.update(await self.run(lookup, event))
        return found

    async def run(self, lookup: Lookup, event: InvitationEvent) -> dict[str, str]:
        what = f"lookup {lookup.name}"
        try:
            request = lookup_request(lookup, event, self.environ)
        except ConfigError as exc:
            raise LookupFailure(f"{what}: {exc.reason} on the worker", Outcome.RETRYING) from None
        except Exception as exc:
            # The type only: the message could quote a secret.
            raise LookupFailure(
                f"{what}: cannot build the request ({type(exc).__name__}); check the ${{VARS}} on the worker",
                Outcome.RETRYING,
            ) from None
        key = self.keys.lookup(_digest(lookup, request)) if lookup.cache else None
        cached = await self._cached(key)
        if cached is not None:
            return cached
        try:
            response = await self.send(request)
        except SendError as exc:
            # A refused address fails for good, as a target's would; anything else is retried.
            outcome = Outcome.FAILED if exc.blocked else Outcome.RETRYING
            raise LookupFailure(f"{what}: {exc.reason}", outcome) from None
        if response.status in lookup.not_found:
            self._not_found(lookup, f"HTTP {response.status}")
        if not 200 <= response.status < 300:
            raise LookupFailure(f"{what}: HTTP {response.status}", Outcome.RETRYING)
        try:
            document = json.loads(response.body)
        except ValueError:
            cut = " (longer than 64 KiB)" if len(response.body) >= ANSWER_CAP else ""
            raise LookupFailure(f"{what}: the answer is not JSON{cut}", Outcome.RETRYING) from None
        values: dict[str, str] = {}
        for field, path in lookup.fields:
            value = read_path(document, path)
            if value is None:
                self._not_found(lookup, f"no value at {path}")
            else:
                values[f"{lookup.name}.{field}"] = value
        await self._keep(key, values, lookup.cache, event)
        return values

    def _not_found(self, lookup: Lookup, why: str) -> None:
        reason = f"lookup {lookup.name}: not found ({why})"
        if lookup.on_not_found == "skip":
            raise LookupFailure(reason + "; target skipped for this event", Outcome.SKIPPED)
        if lookup.on_not_found == "fail":
            raise LookupFailure(reason, Outcome.FAILED)
        raise LookupFailure(reason, Outcome.RETRYING)

    async def _cached(self, key: str | None) -> dict[str, str] | None:
        if key is None or self.client is None:
            return None
        try:
            raw = await self.client.get(key)
        except Exception as exc:
            log.warning("lookup cache unreadable (%s); asking the service", type(exc).__name__)
            return None
        if not raw:
            return None
        data = json.loads(raw)
        return data if isinstance(data, dict) else None

    async def _keep(
        self, key: str | None, values: dict[str, str], seconds: int, event: InvitationEvent
    ) -> None:
        if key is None or self.client is None:
            return
        try:
            # Filed under the event's numbers too, so that an erasure finds it (a cache miss
            # pays these commands, in the same round trip; a hit pays nothing).
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(key, json.dumps(values, ensure_ascii=False), ex=seconds)
                index_lookup(pipe, self.keys, event, key, MAX_LOOKUP_CACHE)
                await pipe.execute()
        except Exception as exc:
            log.warning("lookup answer not cached (%s)", type(exc).__name__)


def _digest(lookup: Lookup, request: OutboundRequest) -> str:
    """What identifies an answer: the rendered request (credentials included) and the paths read."""
    h = hashlib.sha256()
    for part in (request.method, request.url, *(f"{k}:{v}" for k, v in request.headers), repr(lookup.fields)):
        h.update(part.encode())
        h.update(b"\x00")
    h.update(request.body or b"")
    return h.hexdigest()[:40]
