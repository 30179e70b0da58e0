"""Deadlines recorded when they pass (store/scripts/expire.lua) against a real Redis, with the
clock in the test's hands: what waits is expired, what is being sent is not, what is done is
dropped; and the deadlines come from the ingest script."""

from __future__ import annotations

import json

from redis import Redis

from gateway.events import INVITATION_CREATED, make_event
from gateway.store.ingest import IngestHead, IngestItem, expiries, ingest_sync
from gateway.store.queue import Completion, DeliveryQueue

T0 = 1_800_000_000_000


def _state(redis: Redis, eid: str, target: str) -> dict[str, object]:
    return dict(json.loads(redis.hget(f"gw:event:{eid}:deliveries", target) or b"{}"))


def test_waiting_deliveries_expire_at_their_deadline_and_one_in_flight_does_not(redis: Redis) -> None:
    fields = {"invitee": "+15550100009", "invitor": "u", "network_id": "n"}
    event = make_event(fields, INVITATION_CREATED, "query", now=T0 / 1000)
    eid = event.id
    head = IngestHead(
        "gw", T0, 86400, expiries=expiries([("a", 1), ("b", 1), ("c", 1), ("d", 1), ("z", None)])
    )
    ingest_sync(redis, head, [IngestItem.new(event, ["a", "b", "c", "d", "z"])])
    # The ingest gave each delivery to a target with expire_after its deadline (none to z).
    assert redis.zrange("gw:deadlines", 0, -1, withscores=True) == [
        (f"{eid}-{t}".encode(), T0 + 1000) for t in "abcd"
    ]
    q = DeliveryQueue(redis, "gw", 86400)
    # a: claimed, its request in flight (due later: its lease).
    raw = q.claim(T0 + 10, 90_000, 1, {})
    assert raw[2].decode() == f"{eid}-a"
    # b: tried, waiting 10 minutes for its retry; c: delivered; d: never tried yet.
    retry_at = T0 + 600_000
    waiting = json.dumps({"status": "retrying", "attempts": 1, "retries": 1, "next_attempt_at": retry_at})
    q.complete(
        T0 + 20,
        [
            Completion(f"{eid}-b", "b", eid, attempt="{}", state=waiting, due=retry_at),
            Completion(f"{eid}-c", "c", eid, attempt="{}", state=json.dumps({"status": "delivered"})),
        ],
    )
    assert q.expire_due(T0 + 999, [("a", 1), ("b", 1), ("c", 1), ("d", 1)]) == []  # not yet
    expired = q.expire_due(T0 + 1001, [("a", 1), ("b", 1), ("c", 1), ("d", 1)])
    assert sorted(expired) == [
        (f"{eid}-b", "not delivered within expire_after=1 s"),
        (f"{eid}-d", "not delivered within expire_after=1 s"),
    ]
    for t, attempts in (("b", 2), ("d", 1)):
        state = _state(redis, eid, t)
        assert (state["status"], state["attempts"], state["next_attempt_at"]) == ("expired", attempts, None)
        assert redis.zscore("gw:due", f"{eid}-{t}") is None
        assert redis.zscore("gw:dead", f"{eid}-{t}") == T0 + 1001
    [attempt] = [
        json.loads(a)
        for a in redis.lrange(f"gw:event:{eid}:attempts", 0, -1)
        if b"expired" in a and b'"d"' in a
    ]
    assert attempt["outcome"] == "expired" and attempt["at_ms"] == T0 + 1001 and attempt["at"].endswith("Z")
    # a is being sent: left alone, looked at again shortly; c is done: its deadline dropped.
    assert _state(redis, eid, "a")["status"] == "pending"
    assert _state(redis, eid, "c")["status"] == "delivered"
    assert redis.zrange("gw:deadlines", 0, -1, withscores=True) == [(f"{eid}-a".encode(), T0 + 3001)]
    # Its attempt ends in a wait (the engine would have expired it itself: this is the backstop).
    q.complete(T0 + 2000, [Completion(f"{eid}-a", "a", eid, attempt="{}", state=waiting, due=retry_at)])
    assert q.expire_due(T0 + 3001, [("a", 1)]) == [(f"{eid}-a", "not delivered within expire_after=1 s")]
    assert redis.zcard("gw:deadlines") == 0


def test_a_parked_or_rate_scheduled_delivery_waits_and_so_expires(redis: Redis) -> None:
    fields = {"invitee": "+15550100009", "invitor": "u", "network_id": "n"}
    event = make_event(fields, INVITATION_CREATED, "query", now=T0 / 1000)
    head = IngestHead("gw", T0, 86400, expiries=expiries([("p", 5), ("r", 5)]))
    ingest_sync(redis, head, [IngestItem.new(event, ["p", "r"])])
    q = DeliveryQueue(redis, "gw", 86400)
    q.pause("p", T0)
    # The claim parks p's (paused) and spaces r's out (one a minute: its slot is taken first).
    redis.set("gw:rate:r", T0 + 60_000)
    q.claim(
        T0 + 10,
        90_000,
        10,
        {"p": {"concurrency": 0, "interval": 0}, "r": {"concurrency": 0, "interval": 60_000}},
    )
    assert redis.zscore("gw:parked:p", f"{event.id}-p") is not None
    assert redis.hget("gw:reserved", f"{event.id}-r") is not None
    expired = q.expire_due(T0 + 5001, [("p", 5), ("r", 5)])
    assert sorted(d for d, _ in expired) == [f"{event.id}-p", f"{event.id}-r"]
    assert redis.zcard("gw:parked:p") == 0 and redis.hlen("gw:reserved") == 0 and redis.zcard("gw:due") == 0
    # A target that no longer has an expire_after: its deadlines are dropped, nothing recorded.
    other = make_event({**fields, "invitor": "v"}, INVITATION_CREATED, "query", now=T0 / 1000)
    ingest_sync(redis, IngestHead("gw", T0, 86400, expiries="x=1000"), [IngestItem.new(other, ["x"])])
    assert q.expire_due(T0 + 5001, []) == [] and redis.zcard("gw:deadlines") == 0
    assert _state(redis, other.id, "x")["status"] == "pending"
