"""Events stored for a test as the web's accept step stores them: through the ingest script."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.events import InvitationEvent
from gateway.store.codec import now_ms
from gateway.store.events import Store
from gateway.store.ingest import IngestAnswer, IngestHead, IngestItem, ingest_sync


def store_events(store: Store, items: Sequence[tuple[InvitationEvent, Sequence[str]]]) -> IngestAnswer:
    """Store each event with a pending delivery to each of its targets, in one call.

    No dedupe, no limits, and the wake flag left alone: no drain job is queued, so a test that
    runs no worker leaves the deliveries waiting, and one that does finds them by its ticker.
    """
    head = IngestHead(store.prefix, now_ms(), store.retention, wake_ttl=0)
    return ingest_sync(store.redis, head, [IngestItem.new(ev, targets) for ev, targets in items])
