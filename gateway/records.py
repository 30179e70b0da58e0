"""Delivery ids, delivery states and attempt records (pure).

A delivery is one (event, target) pair. Its id is stable (`{event_id}-{target}`): it is the
member of the waiting set in Redis, the `Idempotency-Key` and `webhook-id` sent to the target,
and the name an operator uses to replay it. Event ids are ULIDs (no `-`), so the id splits back
into its two halves at the first `-`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # accepted, not tried yet (or replayed)
    RETRYING = "retrying"  # tried, waiting for its next attempt
    DELIVERED = "delivered"
    FAILED = "failed"  # failed for good: a dead letter, replayable
    EXPIRED = "expired"  # not done before the target's expire_after: a dead letter, replayable
    SKIPPED = "skipped"  # the target was removed before the delivery could be made
    SUPPRESSED = "suppressed"  # held back by an abuse limit at ingest: kept, releasable by replay


FINAL = frozenset(
    {DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.EXPIRED, DeliveryStatus.SKIPPED}
)
DEAD = frozenset({DeliveryStatus.FAILED, DeliveryStatus.EXPIRED})


def delivery_id(event_id: str, target_name: str) -> str:
    """Stable per (event, target). Target names are [A-Za-z0-9_-], event ids ULIDs."""
    return f"{event_id}-{target_name}"


def split_delivery_id(did: str) -> tuple[str, str]:
    """(event_id, target_name) of a delivery id; ValueError if it is not one."""
    event_id, sep, target = did.partition("-")
    if not sep or not event_id or not target:
        raise ValueError(f"not a delivery id: {did!r} (expected EVENTID-TARGET)")
    return event_id, target


_second: tuple[int, str] = (-1, "")


# ".000Z" to ".999Z": a lookup per event, not a formatting.
_MS_SUFFIXES = tuple(f".{frac:03d}Z" for frac in range(1000))


def iso_ms(ms: int) -> str:
    """2026-11-26T02:05:13.806Z (UTC); the part up to the second is computed once per second."""
    global _second
    s, frac = divmod(int(ms), 1000)
    if _second[0] != s:
        _second = (s, datetime.fromtimestamp(s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return _second[1] + _MS_SUFFIXES[frac]


@dataclass(frozen=True, slots=True)
class Delivery:
    """The state of one delivery, kept in the event's `deliveries` hash (one JSON value each).

    `attempts` counts every request made; `retries` only those that used up a step of the
    target's retry schedule (a 429 or a probe of a paused target does not).
    """

    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    retries: int = 0
    throttles: int = 0
    replays: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    updated_at: int = 0
    next_attempt_at: int | None = None
    waiting: str | None = None  # why it waits besides its schedule: "target paused", "target disabled"
    # SUPPRESSED (and kept once released): the rule that held it back, a SuppressionKind value
    # (limit, prefix, cooldown, guard, allowlist); stored only when set
    suppressed_by: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    def to_dict(self) -> dict[str, Any]:
        # Spelt out rather than dataclasses.asdict, which deep-copies: this is on the hot path.
        data = {
            "status": self.status.value,
            "attempts": self.attempts,
            "retries": self.retries,
            "throttles": self.throttles,
            "replays": self.replays,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "updated_at": self.updated_at,
            "next_attempt_at": self.next_attempt_at,
            "waiting": self.waiting,
        }
        if self.suppressed_by is not None:
            data["suppressed_by"] = self.suppressed_by
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Delivery:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        status = DeliveryStatus(known.pop("status", DeliveryStatus.PENDING))
        return cls(status=status, **known)


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRYING = "retrying"
    THROTTLED = "throttled"  # 429: waits as the target asks, no retry used
    FAILED = "failed"
    EXPIRED = "expired"
    SKIPPED = "skipped"
    PAUSED = "paused"  # a probe of a paused target failed; the delivery waits for it
    DISABLED = "disabled"  # 410 Gone: the target is disabled, the delivery waits for re-enabling


@dataclass(slots=True, init=False, unsafe_hash=True)
class Attempt:
    """One request to a target (or a decision not to make one), appended to the event's list.

    Treat it as immutable (change one with dataclasses.replace). It is not frozen only because
    one is built per delivery: a frozen dataclass' `__init__` sets each field through
    `object.__setattr__`, several times the cost of the plain `__init__` below.
    """

    target: str
    attempt: int
    at_ms: int
    outcome: Outcome
    status_code: int | None
    latency_ms: float | None
    error: str | None
    response: str | None
    note: str | None  # why it was made when it was ("created" before "accepted", gateway/ordering.py)

    def __init__(
        self,
        target: str,
        attempt: int,
        at_ms: int,
        outcome: Outcome,
        status_code: int | None = None,
        latency_ms: float | None = None,
        error: str | None = None,
        response: str | None = None,
        note: str | None = None,
    ) -> None:
        self.target = target
        self.attempt = attempt
        self.at_ms = at_ms
        self.outcome = outcome
        self.status_code = status_code
        self.latency_ms = latency_ms
        self.error = error
        self.response = response
        self.note = note

    def to_dict(self) -> dict[str, Any]:
        data = {
            "target": self.target,
            "attempt": self.attempt,
            "at_ms": self.at_ms,
            "outcome": self.outcome.value,
            "status_code": self.status_code,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "response": self.response,
            "at": iso_ms(self.at_ms),
        }
        if self.note is not None:
            data["note"] = self.note  # (left out when None: most records have none)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**{**known, "outcome": Outcome(known.get("outcome", Outcome.FAILED))})
