""" "Created" before "accepted" in the scripts (gateway/ordering.py), against the test's real Redis:
the ingest links an accepted event to its created sibling through the created one's dedupe key,
the claim holds an accepted delivery while its created sibling is unsettled, and neither costs a
command on a created callback or delivery (INFO commandstats)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis

from gateway.events import INVITATION_ACCEPTED, INVITATION_CREATED, InvitationEvent, make_event
from gateway.store.ingest import AcceptStatus, IngestHead, IngestItem, dedupe_key, ingest_sync
from gateway.store.queue import DeliveryQueue

P = "pfx"
NET = "net1"
HOUR = 3_600_000
BOUND = 60_000  # the target's ordering bound in these tests, ms
POLICY: dict[str, Any] = {"crm": {"interval": 0.0, "concurrency": 0, "order": BOUND, "order_label": "1m"}}
PLAIN: dict[str, Any] = {"crm": {"interval": 0.0, "concurrency": 0}}


def event(kind: str, at_ms: int, invitee: str = "+15551231234") -> InvitationEvent:
    fields = {"invitee": invitee, "invitor": "johnsnow", "network_id": NET}
    return make_event(fields, kind, "query", now=at_ms / 1000)


def store(
    redis: Redis, ev: InvitationEvent, now: int, window: int = 600_000, keep: int = 0, link: bool = False
) -> AcceptStatus:
    head = IngestHead(P, now, 86_400, window, wake_ttl=0)
    item = IngestItem.new(
        ev,
        ["crm"],
        dedupe_key(ev),
        dedupe_ttl_ms=keep,
        created_key=dedupe_key(ev, INVITATION_CREATED) if link else "",
    )
    return ingest_sync(redis, head, [item]).results[0].status


def commands(redis: Redis, run: Callable[[], object]) -> int:
    """Commands Redis ran for `run()` (those of scripts included), from INFO commandstats."""

    def total() -> int:
        return sum(int(v["calls"]) for k, v in redis.info("commandstats").items() if k != "cmdstat_info")

    before = total()
    run()
    return total() - before


# -- ingest ----------------------------------------------------------------------------------------


def test_a_created_key_outlives_the_window_and_an_accepted_event_names_its_created_one(redis: Redis) -> None:
    t0 = 1_800_000_000_000
    created = event(INVITATION_CREATED, t0)
    assert store(redis, created, t0, keep=5 * HOUR) is AcceptStatus.ACCEPTED
    key = f"{P}:dedupe:{dedupe_key(created)}"
    assert redis.get(key) == created.id.encode()
    assert 5 * HOUR - 5_000 < redis.pttl(key) <= 5 * HOUR

    accepted = event(INVITATION_ACCEPTED, t0 + 2 * HOUR)
    assert store(redis, accepted, t0 + 2 * HOUR, link=True) is AcceptStatus.ACCEPTED
    raw = redis.get(f"{P}:event:{accepted.id}") or b""
    assert raw.endswith(f',"created_id":"{created.id}"}}'.encode())
    assert InvitationEvent.from_dict(json.loads(raw)).created_id == created.id
    # The event as Python writes it back is the same text (the claim reads the link at its end).
    assert InvitationEvent.from_dict(json.loads(raw)).to_json().encode() == raw


def test_a_repeat_within_the_window_is_a_duplicate_and_past_it_a_new_invitation(redis: Redis) -> None:
    t0 = 1_800_000_000_000
    first = event(INVITATION_CREATED, t0)
    assert store(redis, first, t0, keep=5 * HOUR) is AcceptStatus.ACCEPTED
    again = event(INVITATION_CREATED, t0 + 599_000)
    assert store(redis, again, t0 + 599_000, keep=5 * HOUR) is AcceptStatus.DUPLICATE
    later = event(INVITATION_CREATED, t0 + 601_000)
    assert store(redis, later, t0 + 601_000, keep=5 * HOUR) is AcceptStatus.ACCEPTED
    # The newer invitation holds the key: an accepted one now waits for that one.
    assert redis.get(f"{P}:dedupe:{dedupe_key(first)}") == later.id.encode()
    # With the dedupe window off (0), the key is still written for ordering, and never a duplicate.
    redis.flushdb()
    assert store(redis, first, t0, window=0, keep=5 * HOUR) is AcceptStatus.ACCEPTED
    assert store(redis, again, t0 + 1, window=0, keep=5 * HOUR) is AcceptStatus.ACCEPTED
    assert redis.get(f"{P}:dedupe:{dedupe_key(first)}") == again.id.encode()


def test_an_accepted_event_is_not_linked_to_a_later_created_one_nor_to_none(redis: Redis) -> None:
    t0 = 1_800_000_000_000
    accepted = event(INVITATION_ACCEPTED, t0)
    created = event(INVITATION_CREATED, t0 + 1000)
    store(redis, created, t0 + 1000, keep=5 * HOUR)
    store(redis, accepted, t0 + 1000, link=True)
    assert b"created_id" not in (redis.get(f"{P}:event:{accepted.id}") or b"")
    other = event(INVITATION_ACCEPTED, t0, invitee="+15550000000")
    store(redis, other, t0, link=True)
    assert b"created_id" not in (redis.get(f"{P}:event:{other.id}") or b"")


def test_ordering_costs_no_command_on_a_created_callback_and_one_on_an_accepted_one(redis: Redis) -> None:
    t0 = 1_800_000_000_000

    def created(i: int, keep: int) -> Callable[[], object]:
        return lambda: store(redis, event(INVITATION_CREATED, t0 + i, f"+1555000{i:04d}"), t0 + i, keep=keep)

    def accepted(i: int, link: bool) -> Callable[[], object]:
        return lambda: store(redis, event(INVITATION_ACCEPTED, t0 + i, f"+1555000{i:04d}"), t0 + i, link=link)

    created(0, 0)()  # (the first call loads the script and trims the indexes: not compared)
    assert commands(redis, created(1, 0)) == commands(redis, created(2, 5 * HOUR))
    assert commands(redis, accepted(1, True)) == commands(redis, accepted(3, False)) + 1


# -- claim -----------------------------------------------------------------------------------------


def pair(redis: Redis, t0: int) -> tuple[str, str]:
    """A created and an accepted event of one invitation, to target crm; their delivery ids."""
    created, accepted = event(INVITATION_CREATED, t0), event(INVITATION_ACCEPTED, t0 + 1000)
    store(redis, created, t0, keep=BOUND)
    store(redis, accepted, t0 + 1000, link=True)
    redis.zrem(f"{P}:due", f"{created.id}-crm")
    return created.id, accepted.id


def set_state(redis: Redis, event_id: str, **state: Any) -> None:
    redis.hset(f"{P}:event:{event_id}:deliveries", "crm", json.dumps(state, separators=(",", ":")))


def claim(redis: Redis, now: int, policies: dict[str, Any] = POLICY) -> list[tuple[str, str]]:
    raw = DeliveryQueue(redis, P, 86_400).claim(now, 90_000, 10, policies)
    items = [v.decode() if isinstance(v, bytes) else v for v in raw[2:]]
    return [(items[i], items[i + 3]) for i in range(0, len(items), 4)]


def accepted_state(redis: Redis, accepted: str) -> dict[str, Any]:
    return json.loads(redis.hget(f"{P}:event:{accepted}:deliveries", "crm") or b"{}")


def test_an_accepted_delivery_waits_for_its_created_ones_next_attempt_then_goes(redis: Redis) -> None:
    t0 = 1_800_000_000_000
    created, accepted = pair(redis, t0)
    now = t0 + 2000
    set_state(redis, created, status="retrying", next_attempt_at=now + 5000)
    assert claim(redis, now) == []
    # Due again a second after the created delivery's next attempt; its state says why.
    assert redis.zscore(f"{P}:due", f"{accepted}-crm") == now + 6000
    state = accepted_state(redis, accepted)
    assert state["waiting"] == (
        f"waiting for its invitation_created delivery {created}-crm to be delivered or fail for good "
        "(at most 1m)"
    )
    assert (state["status"], state["next_attempt_at"]) == ("pending", now + 6000)

    # In flight (its retry time passed, its lease in the queue): looked at again in a second.
    set_state(redis, created, status="retrying", next_attempt_at=now)
    redis.zadd(f"{P}:due", {f"{created}-crm": now + 96_000})
    assert [did for did, _ in claim(redis, now + 6000)] == []
    assert redis.zscore(f"{P}:due", f"{accepted}-crm") == now + 7000
    # Waiting nowhere (parked for its target's cap, say): in 30 s.
    redis.zrem(f"{P}:due", f"{created}-crm")
    assert claim(redis, now + 7000) == []
    assert redis.zscore(f"{P}:due", f"{accepted}-crm") == now + 37_000

    # Delivered: it goes, flagged as having waited.
    set_state(redis, created, status="delivered")
    assert claim(redis, now + 37_000) == [(f"{accepted}-crm", f" after:delivered:{created}-crm")]


@pytest.mark.parametrize("status", ["failed", "expired", "skipped", "suppressed"])
def test_a_created_delivery_settled_for_good_holds_nothing(redis: Redis, status: str) -> None:
    t0 = 1_800_000_000_000
    created, accepted = pair(redis, t0)
    set_state(redis, created, status=status)
    assert claim(redis, t0 + 2000) == [(f"{accepted}-crm", "")]


def test_a_created_event_gone_holds_nothing_and_an_unlinked_accepted_one_is_not_looked_at(
    redis: Redis,
) -> None:
    t0 = 1_800_000_000_000
    created, accepted = pair(redis, t0)
    redis.delete(f"{P}:event:{created}:deliveries")
    assert claim(redis, t0 + 2000) == [(f"{accepted}-crm", "")]


def test_the_bound_lets_it_go_flagged_and_a_hold_never_passes_the_bound(redis: Redis) -> None:
    t0 = 1_800_000_000_000
    created, accepted = pair(redis, t0)
    set_state(redis, created, status="retrying", next_attempt_at=t0 + HOUR)
    assert claim(redis, t0 + 2000) == []
    assert redis.zscore(f"{P}:due", f"{accepted}-crm") == t0 + BOUND  # not the created's retry
    assert claim(redis, t0 + BOUND) == [(f"{accepted}-crm", f" bound:retrying:{created}-crm")]


def test_a_target_that_does_not_order_and_a_paused_target_read_nothing_more(redis: Redis) -> None:
    t0 = 1_800_000_000_000
    created, accepted = pair(redis, t0)
    set_state(redis, created, status="retrying", next_attempt_at=t0 + HOUR)
    assert claim(redis, t0 + 2000, PLAIN) == [(f"{accepted}-crm", "")]
    # Paused: parked as before the ordering existed (no polling while the target is paused) ...
    redis.zadd(f"{P}:due", {f"{accepted}-crm": t0 + 2000})
    redis.sadd(f"{P}:held", "crm")
    assert claim(redis, t0 + 2000) == []
    assert redis.zscore(f"{P}:parked:crm", f"{accepted}-crm") == t0 + 2000
    # ... and a probe spent on a delivery that must wait makes room for the next probe at once.
    redis.zrem(f"{P}:parked:crm", f"{accepted}-crm")
    redis.zadd(f"{P}:due", {f"{accepted}-crm": t0 + 2000})
    redis.hset(f"{P}:probes", f"{accepted}-crm", t0)
    redis.set(f"{P}:probe-at:crm", "1")
    assert claim(redis, t0 + 2000) == []
    assert not redis.exists(f"{P}:probe-at:crm")


def test_ordering_costs_no_command_on_a_created_delivery_and_one_on_a_linked_accepted_one(
    redis: Redis,
) -> None:
    t0 = 1_800_000_000_000
    created, accepted = pair(redis, t0)
    set_state(redis, created, status="delivered")
    for did in (f"{created}-crm", f"{accepted}-crm"):
        redis.zadd(f"{P}:due", {did: t0})
    claim(redis, t0 - HOUR)  # (nothing due yet: this loads the script, whose load is not compared)

    def one(did: str, policies: dict[str, Any]) -> int:
        others = {d: s for d, s in redis.zrange(f"{P}:due", 0, -1, withscores=True)}
        redis.delete(f"{P}:due")
        redis.zadd(f"{P}:due", {did: t0})
        try:
            return commands(redis, lambda: claim(redis, t0 + 5000, policies))
        finally:
            redis.zadd(f"{P}:due", others)

    assert one(f"{created}-crm", POLICY) == one(f"{created}-crm", PLAIN)
    assert one(f"{accepted}-crm", POLICY) == one(f"{accepted}-crm", PLAIN) + 1


# -- a stored event run again (a spool drain, a batch sent again) ------------------------------------


def test_a_rerun_of_an_old_stored_created_event_leaves_the_newer_invitations_key(redis: Redis) -> None:
    t0 = 1_800_000_000_000
    first = event(INVITATION_CREATED, t0)
    assert store(redis, first, t0, keep=5 * HOUR) is AcceptStatus.ACCEPTED
    later = event(INVITATION_CREATED, t0 + 601_000)  # past the window: a new invitation
    assert store(redis, later, t0 + 601_000, keep=5 * HOUR) is AcceptStatus.ACCEPTED
    key = f"{P}:dedupe:{dedupe_key(first)}"
    assert redis.get(key) == later.id.encode()
    # The first event again (stored before): exists, and nothing else changes.
    assert store(redis, first, t0 + 700_000, keep=5 * HOUR) is AcceptStatus.EXISTS
    assert redis.get(key) == later.id.encode()
    # So a repeat of the newer one within its window is still a duplicate, not delivered again.
    again = event(INVITATION_CREATED, t0 + 700_000)
    assert store(redis, again, t0 + 700_000, keep=5 * HOUR) is AcceptStatus.DUPLICATE


def test_a_rerun_of_a_stored_event_past_its_window_does_not_make_a_new_invitation_a_duplicate(
    redis: Redis,
) -> None:
    t0 = 1_800_000_000_000
    first = event(INVITATION_CREATED, t0)
    assert store(redis, first, t0) is AcceptStatus.ACCEPTED
    key = f"{P}:dedupe:{dedupe_key(first)}"
    redis.delete(key)  # its window (600 s) over: the key expired
    # An orphaned spool file drained an hour later runs it again: stored before, so exists ...
    assert store(redis, first, t0 + HOUR) is AcceptStatus.EXISTS
    # ... and a new invitation to the same invitee then is not a duplicate of the hour-old one.
    fresh = event(INVITATION_CREATED, t0 + HOUR + 1000)
    assert store(redis, fresh, t0 + HOUR + 1000) is AcceptStatus.ACCEPTED
