"""Events stored for a test as the web's accept step stores them: through the ingest script."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.events import INVITATION_CREATED, InvitationEvent, make_event
from gateway.networks import policy_from_dict
from gateway.store.codec import now_ms
from gateway.store.events import Store
from gateway.store.ingest import AcceptStatus, IngestAnswer, IngestHead, IngestItem, ingest_sync, limit_fields


def store_events(store: Store, items: Sequence[tuple[InvitationEvent, Sequence[str]]]) -> IngestAnswer:
    """Store each event with a pending delivery to each of its targets, in one call.

    No dedupe, no limits, and the wake flag left alone: no drain job is queued, so a test that
    runs no worker leaves the deliveries waiting, and one that does finds them by its ticker.
    """
    head = IngestHead(store.prefix, now_ms(), store.retention, wake_ttl=0)
    return ingest_sync(store.redis, head, [IngestItem.new(ev, targets) for ev, targets in items])


def hold_prefix(store: Store, network: str, target: str) -> str:
    """A hold of the guard on +8821 for the network, and one invitation it held back (the id of
    its delivery to `target`), stored as the web stores them."""
    policy = policy_from_dict(network, {"guard": {"min_created": 1, "max_accepted_ratio": 0.1}})
    results = []
    for n in range(2):
        now = now_ms()
        fields = {"invitee": f"+88216123{n:04d}", "invitor": f"u{n}", "network_id": network}
        event = make_event(fields, INVITATION_CREATED, "query", now=now / 1000)
        item = IngestItem.new(event, [target], "", limit_fields(event, policy, now))
        head = IngestHead(store.prefix, now, store.retention, wake_ttl=0)
        results.append((event.id, ingest_sync(store.redis, head, [item]).results[0].status))
    assert [s for _, s in results] == [AcceptStatus.ACCEPTED, AcceptStatus.SUPPRESSED]
    return f"{results[1][0]}-{target}"
