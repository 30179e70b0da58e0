"""The prefix guard's holds: listed, lifted, and told to the alert target (sync: the CLI, the
admin Service and the worker's ticker).

The ingest script sets a hold (`{p}:hold:DIGEST`, expiring when the hold ends) and indexes it in
`{p}:holds` with its network, prefix, reason and times. A hold stays in the index until a
worker's ticker has told its end (hold_news.lua), so the alert target hears of every hold twice,
once when it starts and once when it ends (its time ran out, or someone lifted it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis import Redis

from gateway.records import iso_ms
from gateway.store import lua
from gateway.store.codec import text
from gateway.store.keys import Keys

LIFT = lua.load("lift_hold")
NEWS = lua.load("hold_news")
HOLD_ID = re.compile(r"[0-9a-f]{24}")  # a hold's id: the digest of its key (keys.limit_key)


class HoldChange(StrEnum):
    HELD = "held"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class PrefixHold:
    """A destination prefix the guard holds (or held, until its end is told)."""

    id: str  # the digest of its key: what `gateway holds lift` and DELETE /holds/{id} take
    network: str
    prefix: str  # digits, without +
    reason: str
    since_ms: int
    ends_ms: int  # when it ends by itself
    lifted_by: str | None = None  # "by hand", "through the API by NAME"
    ended_ms: int | None = None  # when it ended (lifted, or its time ran out)

    @classmethod
    def from_json(cls, key: str, raw: str | bytes) -> PrefixHold:
        data = json.loads(raw)
        ended = data.get("ended")
        return cls(
            id=key.removeprefix("hold:"),
            network=str(data["network"]),
            prefix=str(data["prefix"]),
            reason=str(data["reason"]),
            since_ms=int(data["since"]),
            ends_ms=int(data["ends"]),
            lifted_by=data.get("lifted") or None,
            ended_ms=int(ended) if ended is not None else None,
        )

    def active(self, now: int) -> bool:
        return self.lifted_by is None and self.ends_ms > now

    def to_dict(self) -> dict[str, Any]:
        """As GET /holds and `gateway holds list --json` show it."""
        return {
            "id": self.id,
            "network": self.network,
            "prefix": "+" + self.prefix,
            "reason": self.reason,
            "since": iso_ms(self.since_ms),
            "until": iso_ms(self.ends_ms),
        }


class Holds:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.key = Keys(prefix).holds
        self._lift = redis.register_script(LIFT.text)
        self._news = redis.register_script(NEWS.text)

    def active(self, now: int) -> list[PrefixHold]:
        """The holds in force, oldest first."""
        raw = self.redis.hgetall(self.key)
        holds = [PrefixHold.from_json(text(k), v) for k, v in raw.items()]
        return sorted((h for h in holds if h.active(now)), key=lambda h: (h.since_ms, h.id))

    def get(self, hold_id: str, now: int) -> PrefixHold | None:
        if not HOLD_ID.fullmatch(hold_id):
            return None
        raw = self.redis.hget(self.key, f"hold:{hold_id}")
        hold = PrefixHold.from_json(f"hold:{hold_id}", raw) if raw else None
        return hold if hold is not None and hold.active(now) else None

    def lift(self, hold_id: str, now: int, by: str) -> PrefixHold | None:
        """Lift a hold in force; None if there is none of that id (any more)."""
        if not HOLD_ID.fullmatch(hold_id):
            return None
        raw = self._lift(args=[self.prefix, now, f"hold:{hold_id}", by])
        return PrefixHold.from_json(f"hold:{hold_id}", raw) if raw else None

    def news(self, now: int) -> list[tuple[HoldChange, PrefixHold]]:
        """Holds not told yet, and those that ended, each returned to one caller only."""
        flat = [text(v) for v in self._news(args=[self.prefix, now])]
        return [
            (HoldChange(flat[i]), PrefixHold.from_json(flat[i + 1], flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]
