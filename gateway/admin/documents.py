"""The JSON documents of the admin side: what the API answers, the dashboard shows and
`gateway ... --json` prints (one implementation of each, so the three agree).

Times are ISO 8601 UTC strings (`...Z`); a delivery's request count is `attempt_count` where
its `attempts` (the list) is beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.events import InvitationEvent
from gateway.records import Delivery, iso_ms
from gateway.store.queue import TargetHealth


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A failed or expired delivery (an item of GET /deliveries/failed)."""

    delivery_id: str
    failed_at_ms: int
    target: str
    event: InvitationEvent
    delivery: Delivery

    def to_dict(self) -> dict[str, Any]:
        return {
            **_delivery_of(self.delivery_id, self.target, self.event),
            "failed_at": iso_ms(self.failed_at_ms),
            "status": str(self.delivery.status),
            "attempts": self.delivery.attempts,
            "replays": self.delivery.replays,
            "last_status_code": self.delivery.last_status_code,
            "last_error": self.delivery.last_error,
        }


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A delivery held back by an abuse limit (an item of GET /suppressed)."""

    delivery_id: str
    received_ms: int
    target: str
    event: InvitationEvent
    delivery: Delivery

    def to_dict(self) -> dict[str, Any]:
        return {
            **_delivery_of(self.delivery_id, self.target, self.event),
            "received_at": iso_ms(self.received_ms),
            "reason": self.delivery.waiting,
            "kind": self.delivery.suppressed_by,
            "replays": self.delivery.replays,
        }


def _delivery_of(delivery_id: str, target: str, event: InvitationEvent) -> dict[str, Any]:
    """What names a delivery in a list of them: itself, its target, its event's network, type and id."""
    return {
        "delivery_id": delivery_id,
        "target": target,
        "network": event.network_id,
        "event": event.type,
        "event_id": event.id,
    }


def event_json(event: InvitationEvent) -> dict[str, Any]:
    return {k: v for k, v in event.to_dict().items() if k != "received_at_ms"}


def event_summary(event: InvitationEvent, deliveries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """An item of GET /events: the event, and per target its delivery's status, request count,
    why it waits (`waiting`: a suppressed one's reason, "target paused", ...) and, suppressed,
    the rule that held it back (`suppressed_by`)."""
    return {
        **event_json(event),
        "deliveries": {
            name: {
                "status": d.get("status"),
                "attempts": d.get("attempts", 0),
                "last_status_code": d.get("last_status_code"),
                "waiting": d.get("waiting"),
                "suppressed_by": d.get("suppressed_by"),
            }
            for name, d in sorted(deliveries.items())
        },
    }


def delivery_json(state: Delivery) -> dict[str, Any]:
    """A delivery's state; its request count is `attempt_count` (the list beside it is `attempts`)."""
    data = state.to_dict()
    for key in ("updated_at", "next_attempt_at"):
        data[key] = iso_ms(data[key]) if data[key] else None
    data["attempt_count"] = data.pop("attempts")
    return data


def attempt_json(attempt: Mapping[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in attempt.items() if k != "at_ms"}
    if "at" not in data and "at_ms" in attempt:
        data["at"] = iso_ms(attempt["at_ms"])
    return data


def health_json(health: TargetHealth) -> dict[str, Any]:
    return {**health.to_dict(), "since": iso_ms(health.since) if health.since is not None else None}


def replay_json(results: Mapping[str, str]) -> dict[str, Any]:
    """What a replay did: per delivery id its result, and how many of each."""
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r] = counts.get(r, 0) + 1
    return {"results": dict(results), "counts": counts}
