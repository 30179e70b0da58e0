"""Ordering, "created" before "accepted" per target: the rule, and where each piece lives (pure).

An invitation_accepted delivery to a target is not sent before the same invitation's
invitation_created delivery to that target (same network, invitee and invitor) is delivered or
has failed for good (failed, expired, skipped; or suppressed by an abuse limit, which the gateway
never sends on its own: waiting would only delay the accepted one, the very signal that the
invitation was real). It waits at most the target's bound, counted from the created callback:
`accepted_waits_for_created`, by default the created delivery's span (its `expire_after`, else the
end of its retry schedule); after it, it goes anyway and its attempt says so. A target that takes
one of the two events only never holds anything; neither does an accepted invitation whose
created one never came (or came after the dedupe key's life, or was erased).

The pieces, and what they cost:

- ingest (store/scripts/ingest.lua). A created event's dedupe key (type, network, invitor,
  invitee -> its id) lives max(dedupe window, the longest bound of its targets) instead of the
  window: the same one SET, no extra command (`IngestOrder.dedupe_ttl_ms`). A repeat within the
  window is a duplicate as before; past it (a ULID carries its millisecond), a new invitation
  that takes the key over. An accepted event one of whose targets orders GETs its created
  sibling's key and, if found, stores the created event's id in its own JSON (`created_id`):
  one command per accepted callback, only there (`IngestOrder.link`).
- claim (store/scripts/claim.lua). For a target that orders, the claim reads the event's JSON
  before its checks rather than after (the same GET). An accepted delivery with a `created_id`
  costs one HGET more, the created delivery's state to that target. Unsettled and within the
  bound: not claimed but due again at the created delivery's next attempt plus a second (in a
  second while that one is due or in flight, in 30 s while it is parked for its target's
  concurrency cap), never past the bound, its state's `waiting` saying why. Created deliveries
  pay nothing; nor does anything while its target is paused (parked first).
- engine: an accepted delivery that waited, or goes past the bound, is claimed with a flag
  (`ORDER_FLAGS`); its attempt record gets a `note` (`note_for`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.targets import Config, duration_label
from gateway.events import INVITATION_ACCEPTED, INVITATION_CREATED

# The claim's flags for an accepted delivery: "after:STATUS:CREATED_DELIVERY_ID" (it waited, and
# the created delivery settled as STATUS) or "bound:STATUS:CREATED_DELIVERY_ID" (the bound passed
# with the created delivery still STATUS). Other flags ("probe") may come before, space-separated.
ORDER_FLAGS = ("after", "bound")


@dataclass(frozen=True, slots=True)
class IngestOrder:
    """What the ingest does for ordering, per (event type, network) of a configuration."""

    dedupe_ttl_ms: int = 0  # a created event's dedupe key lives this long (0: the dedupe window)
    link: bool = False  # an accepted event looks for its created sibling


NO_ORDER = IngestOrder()


def ingest_order(config: Config, event_type: str, network: str) -> IngestOrder:
    bounds = [t.order_bound() for t in config.routes(event_type, network)]
    if not any(bounds):
        return NO_ORDER
    if event_type == INVITATION_CREATED:
        return IngestOrder(dedupe_ttl_ms=max(bounds) * 1000)
    return IngestOrder(link=event_type == INVITATION_ACCEPTED)


def order_flag(flag: str) -> tuple[bool, str | None]:
    """(is a probe, the ordering part or None) of a claim's flag."""
    probe, order = False, None
    for part in flag.split(" "):
        if part == "probe":
            probe = True
        elif part.partition(":")[0] in ORDER_FLAGS:
            order = part
    return probe, order


def note_for(order: str, bound_s: int) -> str:
    """The attempt's note for an ordering flag (see ORDER_FLAGS)."""
    kind, _, rest = order.partition(":")
    status, _, created = rest.partition(":")
    if kind == "after":
        return f"waited for its invitation_created delivery {created} ({status})"
    return (
        f"sent after the ordering bound ({duration_label(bound_s)}): its invitation_created delivery "
        f"{created} was still {status}"
    )
