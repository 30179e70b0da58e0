"""What a query of the admin side asks (pure): the filters of events and of dead letters, a page
of results and the cursor that continues it. Bad values are `Invalid`, naming the field."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.admin import Invalid
from gateway.events import ALERT_EVENT, EVENT_TYPES, InvitationEvent
from gateway.records import DeliveryStatus, iso_ms
from gateway.store.ingest import SuppressionKind

MAX_LIMIT = 500  # items in one page
EVENT_TYPE_CHOICES = (*EVENT_TYPES, ALERT_EVENT)
STATES = tuple(s.value for s in DeliveryStatus)
# What an event filter takes: a delivery status, or `waiting` (pending or retrying: not finished).
STATE_FILTERS = (*STATES, "waiting")
_WAITING_STATES = frozenset({DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value})


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor}


@dataclass(frozen=True, slots=True)
class EventFilter:
    network: str | None = None
    type: str | None = None
    invitee: str | None = None
    invitor: str | None = None
    state: str | None = None  # a DeliveryStatus value: events with a delivery in that state
    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in EVENT_TYPE_CHOICES:
            raise Invalid(
                f"unknown event type {self.type!r} (known: {', '.join(EVENT_TYPE_CHOICES)})", "type"
            )
        if self.state is not None and self.state not in STATE_FILTERS:
            raise Invalid(
                f"unknown delivery state {self.state!r} (known: {', '.join(STATE_FILTERS)})", "state"
            )
        _check_range(self.since_ms, self.until_ms)

    def _state_matches(self, status: Any) -> bool:
        return status in _WAITING_STATES if self.state == "waiting" else status == self.state

    def matches(self, event: InvitationEvent, deliveries: Mapping[str, Mapping[str, Any]]) -> bool:
        return (
            (self.type is None or event.type == self.type)
            and (
                self.invitee is None or self.invitee in (event.invitee, event.invitee_raw, event.invitee_e164)
            )
            and (self.invitor is None or event.invitor == self.invitor)
            and (self.state is None or any(self._state_matches(d.get("status")) for d in deliveries.values()))
        )


@dataclass(frozen=True, slots=True)
class FailedFilter:
    targets: frozenset[str] = field(default_factory=frozenset)
    networks: frozenset[str] = field(default_factory=frozenset)
    event: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.event is not None and self.event not in EVENT_TYPE_CHOICES:
            raise Invalid(f"unknown event type {self.event!r}", "event")
        _check_range(self.since_ms, self.until_ms)


SUPPRESSION_KINDS = tuple(k.value for k in SuppressionKind)


@dataclass(frozen=True, slots=True)
class SuppressedFilter:
    """Which suppressed deliveries: of these networks, held back by these rules (`reasons`:
    SuppressionKind values), received in the range."""

    networks: frozenset[str] = field(default_factory=frozenset)
    reasons: frozenset[str] = field(default_factory=frozenset)
    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        bad = sorted(self.reasons - set(SUPPRESSION_KINDS))
        if bad:
            raise Invalid(f"unknown reason {bad[0]!r} (known: {', '.join(SUPPRESSION_KINDS)})", "reason")
        _check_range(self.since_ms, self.until_ms)


def _check_range(since_ms: int | None, until_ms: int | None) -> None:
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise Invalid(f"since ({iso_ms(since_ms)}) is after until ({iso_ms(until_ms)})", "since")


# -- cursors: opaque to clients, "ms:id" inside -----------------------------------------------------


def encode_cursor(ms: int, ident: str) -> str:
    return base64.urlsafe_b64encode(f"{ms}:{ident}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[int, str] | None:
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms, _, ident = text.partition(":")
        if not ident:
            raise ValueError(cursor)
        return int(ms), ident
    except (ValueError, UnicodeDecodeError):
        raise Invalid("not a cursor this API gave out", "cursor") from None


def page_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"must be 1 to {MAX_LIMIT}, got {limit}", "limit")
    return limit
