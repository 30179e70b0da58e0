"""Redis keys and operations: configuration, events, deliveries, attempts.

This is the only module that knows key names. Everything lives under one prefix, and every
per-event key expires after the retention period (invitee numbers are personal data).

    {p}:config                 JSON of the applied configuration (targets, aliases, settings)
    {p}:config:version         INCR'd on every change; processes reload when it moves
    {p}:config:digest          sha256 of the JSON, so re-applying the same file is a no-op
    {p}:event:{id}             JSON of the InvitationEvent
    {p}:event:{id}:deliveries  HASH target -> JSON delivery state
    {p}:event:{id}:attempts    LIST of JSON attempt records, oldest first
    {p}:events                 ZSET of event ids by receive time (ms)
    {p}:events:net:{network}   ZSET of that network's event ids
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.client import Pipeline

from gateway.events import InvitationEvent

PENDING = "pending"
DELIVERED = "delivered"
RETRYING = "retrying"
FAILED = "failed"
SKIPPED = "skipped"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Store:
    redis: Redis
    prefix: str = "gw"
    retention: int = 30 * 86400  # seconds

    # -- keys -------------------------------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def event_key(self, event_id: str) -> str:
        return self._k("event", event_id)

    # -- configuration ----------------------------------------------------------------------
    def save_config(self, config: dict[str, Any]) -> tuple[int, bool]:
        """Store the configuration; returns (version, changed). The same content is a no-op."""
        blob = _dumps(config)
        digest = hashlib.sha256(blob.encode()).hexdigest()
        if self.redis.get(self._k("config", "digest")) == digest.encode():
            return self.config_version(), False
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k("config"), blob)
            pipe.set(self._k("config", "digest"), digest)
            pipe.incr(self._k("config", "version"))
            version = pipe.execute()[-1]
        return int(version), True

    def load_config(self) -> tuple[int, dict[str, Any] | None]:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self._k("config", "version"))
            pipe.get(self._k("config"))
            version, blob = pipe.execute()
        return int(version or 0), (json.loads(blob) if blob else None)

    def config_version(self) -> int:
        return int(self.redis.get(self._k("config", "version")) or 0)

    def queue_config_version(self, pipe: Pipeline) -> None:
        """Add a read of the config version to an accept pipeline (no extra round trip)."""
        pipe.get(self._k("config", "version"))

    # -- events -----------------------------------------------------------------------------
    def write_event(self, pipe: Pipeline, event: InvitationEvent, target_names: Iterable[str]) -> None:
        """Queue the writes that store an event and its pending deliveries on `pipe`."""
        ttl = self.retention
        ek = self.event_key(event.id)
        pipe.set(ek, _dumps(event.to_dict()), ex=ttl)
        names = list(target_names)
        if names:
            state = _dumps({"status": PENDING, "attempts": 0, "updated_at": event.received_at_ms})
            pipe.hset(ek + ":deliveries", mapping=dict.fromkeys(names, state))
            pipe.expire(ek + ":deliveries", ttl)
        cutoff = event.received_at_ms - ttl * 1000
        for index in (self._k("events"), self._k("events", "net", event.network_id)):
            pipe.zadd(index, {event.id: event.received_at_ms})
            pipe.zremrangebyscore(index, "-inf", cutoff)
            pipe.expire(index, ttl)

    def get_event(self, event_id: str) -> InvitationEvent | None:
        blob = self.redis.get(self.event_key(event_id))
        return InvitationEvent.from_dict(json.loads(blob)) if blob else None

    def get_deliveries(self, event_id: str) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(self.event_key(event_id) + ":deliveries")
        return {_text(k): json.loads(v) for k, v in raw.items()}

    def get_delivery(self, event_id: str, target: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.event_key(event_id) + ":deliveries", target)
        return json.loads(raw) if raw else None

    def get_attempts(self, event_id: str) -> list[dict[str, Any]]:
        return [json.loads(a) for a in self.redis.lrange(self.event_key(event_id) + ":attempts", 0, -1)]

    def record_attempt(
        self, event_id: str, target: str, attempt: dict[str, Any], state: dict[str, Any]
    ) -> None:
        """Append an attempt and update the delivery's state, atomically."""
        ek = self.event_key(event_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(ek + ":attempts", _dumps({"target": target, **attempt}))
            pipe.hset(ek + ":deliveries", target, _dumps(state))
            # Created here if the event's keys expired meanwhile: never keep them forever.
            pipe.expire(ek + ":attempts", self.retention)
            pipe.expire(ek + ":deliveries", self.retention)
            pipe.execute()

    def recent_events(self, limit: int = 20, network: str | None = None) -> list[str]:
        index = self._k("events", "net", network) if network else self._k("events")
        return [_text(m) for m in self.redis.zrevrange(index, 0, max(limit, 1) - 1)]

    def events_with_deliveries(self, ids: Sequence[str]) -> list[tuple[InvitationEvent, dict[str, Any]]]:
        out = []
        for eid in ids:
            ev = self.get_event(eid)
            if ev is not None:
                out.append((ev, self.get_deliveries(eid)))
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def now_ms() -> int:
    return int(time.time() * 1000)
