"""The scripts' argument layouts, written once beside their encoders (IngestItem, Completion):
each field, given a value of its own, lands where it should when the real script runs against
the test's real Redis."""

from __future__ import annotations

import asyncio
import json
from dataclasses import fields

import pytest
from redis import Redis

from gateway.events import make_alert
from gateway.fastredis import FastRedis
from gateway.store.ingest import (
    ACCEPTED,
    HEAD_ARGS,
    ITEM_ARGS,
    AcceptResult,
    AcceptStatus,
    IngestAnswer,
    IngestHead,
    IngestItem,
    ItemKind,
    SuppressionKind,
    encode,
    ingest,
    ingest_sync,
)
from gateway.store.queue import (
    COMPLETION_ARGS,
    COMPLETION_HEAD_ARGS,
    DELIVERED_ARGS,
    Completion,
    DeliveryQueue,
    HealthSignal,
    encode_completions,
)

NOW = 1_800_000_000_000
RECEIVED = NOW - 5_000  # within retention: not trimmed


def test_the_layouts_count_every_field() -> None:
    assert len(fields(IngestHead)) == HEAD_ARGS
    assert len(fields(IngestItem)) == ITEM_ARGS
    item = IngestItem(ItemKind.NEW, "ID", "{}", "net", 1, ["a", "b"])
    assert len(encode(IngestHead("p", 1, 1), [item, item])) == HEAD_ARGS + 2 * ITEM_ARGS
    assert len(fields(Completion)) == COMPLETION_ARGS
    record = Completion("E-t", "t", "E")
    full = 1 + COMPLETION_ARGS  # the kind, then every field
    assert len(encode_completions("p", 1, 1, [record] * 3)) == COMPLETION_HEAD_ARGS + 3 * full
    delivered = Completion("E-t", "t", "E", attempt="a", state="s", health=HealthSignal.OK)
    args = encode_completions("p", 1, 1, [delivered, record])
    assert len(args) == COMPLETION_HEAD_ARGS + 1 + DELIVERED_ARGS + full
    assert args[COMPLETION_HEAD_ARGS :: 1 + DELIVERED_ARGS][:2] == ["d", "f"]


def _ingest_batch() -> tuple[IngestHead, list[IngestItem]]:
    head = IngestHead(
        prefix="pfx",
        now_ms=NOW,
        retention=7_777,
        dedupe_ms=555_000,
        state='{"status":"pending","mark":"the head state"}',
        wake_ttl=44,
        expiries="tb=3000,zz=9",
        callbacks_kept=5,
        callbacks_ms=777_000,
    )
    first = IngestItem(
        kind=ItemKind.NEW,
        id="01FIRST",
        event_json='{"mark":"the first event"}',
        network="net-x",
        received_ms=RECEIVED,
        targets=["ta", "tb"],
        dedupe_key="dk-1",
        limits=None,
        entry=f'[{RECEIVED},"first"',
    )
    held_back = IngestItem(
        ItemKind.NEW,
        "01HELD",
        '{"mark":"held"}',
        "net-y",
        RECEIVED + 1,
        ["tc"],
        "dk-2",
        {"sup": "no, because", "k": "allowlist"},
        f'[{RECEIVED + 1},"held"',
    )
    again = IngestItem(
        ItemKind.NEW,
        "01AGAIN",
        '{"mark":"again"}',
        "net-x",
        RECEIVED + 2,
        ["ta"],
        "dk-1",
        entry=f'[{RECEIVED + 2},"again"',
    )
    more = IngestItem(ItemKind.ADD, "01FIRST", "", "net-x", RECEIVED, ["td"])
    return head, [first, held_back, again, more]


def _check_ingest(redis: Redis, answer: IngestAnswer) -> None:
    assert answer.version == 9 and answer.woke
    assert answer.results == [
        ACCEPTED,
        AcceptResult(AcceptStatus.SUPPRESSED, reason="no, because", kind=SuppressionKind.ALLOWLIST),
        AcceptResult(AcceptStatus.DUPLICATE, duplicate_of="01FIRST"),
        ACCEPTED,
    ]
    assert answer.holds == []
    # prefix, retention, the event's id and JSON
    assert redis.get("pfx:event:01FIRST") == b'{"mark":"the first event"}'
    assert 7_700 < redis.ttl("pfx:event:01FIRST") <= 7_777
    # the head's state, the targets (and the added one), the received time as every score
    deliveries = redis.hgetall("pfx:event:01FIRST:deliveries")
    assert deliveries == dict.fromkeys([b"ta", b"tb", b"td"], b'{"status":"pending","mark":"the head state"}')
    assert redis.zrange("pfx:due", 0, -1, withscores=True) == [
        (b"01FIRST-ta", RECEIVED),
        (b"01FIRST-tb", RECEIVED),
        (b"01FIRST-td", RECEIVED),
    ]
    # the network's index; the dedupe key and window
    assert redis.zscore("pfx:events:net:net-x", "01FIRST") == RECEIVED
    assert redis.zscore("pfx:events", "01FIRST") == RECEIVED
    assert redis.get("pfx:dedupe:dk-1") == b"01FIRST"
    assert 550_000 < redis.pttl("pfx:dedupe:dk-1") <= 555_000
    # the limits (a reason to suppress): kept, not due, its state stamped with `now`
    held = json.loads(redis.hget("pfx:event:01HELD:deliveries", "tc") or b"{}")
    assert (held["status"], held["waiting"], held["updated_at"], held["suppressed_by"]) == (
        "suppressed",
        "no, because",
        NOW,
        "allowlist",
    )
    assert redis.zscore("pfx:suppressed", "01HELD-tc") == RECEIVED + 1
    assert redis.zscore("pfx:events:net:net-y", "01HELD") == RECEIVED + 1
    # the duplicate: nothing kept
    assert not redis.exists("pfx:event:01AGAIN")
    # the wake TTL
    assert 40 < redis.ttl("pfx:wake") <= 44
    # the targets' expire_after: a deadline for the waiting delivery to tb only
    assert redis.zrange("pfx:deadlines", 0, -1, withscores=True) == [(b"01FIRST-tb", RECEIVED + 3000)]
    # the callbacks inspector's entries, closed with each outcome, on each network's list, newest
    # first; its cap (5: all kept) and window (the lists' life)
    inspected = [json.loads(e) for e in redis.lrange("pfx:callbacks:net:net-x", 0, -1)]
    assert inspected == [[RECEIVED + 2, "again", "duplicate", "01FIRST"], [RECEIVED, "first", "accepted"]]
    assert [json.loads(e) for e in redis.lrange("pfx:callbacks:net:net-y", 0, -1)] == [
        [RECEIVED + 1, "held", "suppressed", "no, because"]
    ]
    assert 770_000 < redis.pttl("pfx:callbacks:net:net-x") <= 777_000
    assert redis.zrange("pfx:callbacks:networks", 0, -1, withscores=True) == [
        (b"net-x", NOW),
        (b"net-y", NOW),
    ]


def test_each_ingest_argument_lands_where_it_should(redis: Redis) -> None:
    redis.set("pfx:config:version", 9)
    head, items = _ingest_batch()
    _check_ingest(redis, ingest_sync(redis, head, items))


def test_the_same_through_the_lean_client(redis_url: str, redis: Redis) -> None:
    redis.set("pfx:config:version", 9)
    head, items = _ingest_batch()

    async def go() -> IngestAnswer:
        client = FastRedis(redis_url)
        try:
            return await ingest(client, head, items)
        finally:
            await client.aclose()

    _check_ingest(redis, asyncio.run(go()))


def test_a_wake_ttl_of_zero_leaves_the_wake_flag_alone(redis: Redis) -> None:
    head, items = _ingest_batch()
    head = IngestHead(head.prefix, head.now_ms, head.retention, wake_ttl=0)
    assert ingest_sync(redis, head, items[:1]).woke is False
    assert not redis.exists("pfx:wake")


@pytest.fixture
def queue(redis: Redis) -> DeliveryQueue:
    for eid, target in (("E1", "ta"), ("E2", "tb"), ("E3", "tc")):
        redis.hset(f"pfx:event:{eid}:deliveries", target, '{"status":"pending"}')
        redis.zadd("pfx:due", {f"{eid}-{target}": NOW + 90_000})  # claimed: leased
    redis.zadd("pfx:inflight:ta", {"E1-ta": NOW + 90_000})
    redis.zadd("pfx:parked:ta", {"E9-ta": 1})  # waiting for a free slot of ta's cap
    redis.hset("pfx:target:ta", mapping={"state": "active", "failures": 1, "first_failure_at": NOW - 1})
    redis.sadd("pfx:held", "tc")
    redis.hset("pfx:target:tc", mapping={"state": "paused", "manual": "0"})
    return DeliveryQueue(redis, "pfx", 6_666)


def test_each_completion_field_lands_where_it_should(redis: Redis, queue: DeliveryQueue) -> None:
    failed = Completion(
        delivery_id="E1-ta",
        target="ta",
        event_id="E1",
        concurrency=3,  # a slot of ta's cap is free: its parked one is due
        pause_failures=2,  # with the failure before it, ta pauses ...
        pause_ms=0,  # ... at once (swapped with pause_failures: never)
        attempt='{"mark":"the attempt"}',
        state='{"mark":"the state"}',
        due=NOW + 12_345,
        park=False,
        dead=True,
        throttle_until=NOW + 50_000,
        health=HealthSignal.FAIL,
    )
    gone = Completion("E2-tb", "tb", "E2", park=True, health=HealthSignal.GONE)
    probed = Completion("E3-tc", "tc", "E3", health=HealthSignal.OK)
    changes = [c.decode() for c in queue.complete(NOW, [failed, gone, probed])]

    assert redis.lrange("pfx:event:E1:attempts", 0, -1) == [b'{"mark":"the attempt"}']
    assert 6_600 < redis.ttl("pfx:event:E1:attempts") <= 6_666
    assert redis.hget("pfx:event:E1:deliveries", "ta") == b'{"mark":"the state"}'
    assert redis.zscore("pfx:due", "E1-ta") == NOW + 12_345
    assert redis.zscore("pfx:dead", "E1-ta") == NOW
    assert redis.get("pfx:throttle:ta") == str(NOW + 50_000).encode()
    assert redis.zcard("pfx:inflight:ta") == 0
    assert redis.zscore("pfx:due", "E9-ta") == NOW
    assert redis.hget("pfx:target:ta", "state") == b"paused"
    # park, no attempt and no state: the delivery moves to parked, its records stay
    assert redis.zscore("pfx:parked:tb", "E2-tb") == NOW and redis.zscore("pfx:due", "E2-tb") is None
    assert redis.llen("pfx:event:E2:attempts") == 0
    assert redis.hget("pfx:event:E2:deliveries", "tb") == b'{"status":"pending"}'
    assert redis.hget("pfx:target:tb", "state") == b"disabled"
    # ok on a paused target: resumed; neither due nor dead: done
    assert redis.hget("pfx:target:tc", "state") == b"active"
    assert redis.zscore("pfx:due", "E3-tc") is None and redis.zscore("pfx:dead", "E3-tc") is None
    assert changes[0::3] == ["ta", "tb", "tc"]
    assert changes[1::3] == ["paused", "disabled", "resumed"]


@pytest.mark.parametrize("cap", [0, 2])
def test_a_delivered_record_lands_as_its_full_form(redis: Redis, cap: int) -> None:
    # The usual record travels short ("d": id, cap, attempt, state); the same record with one
    # field that forbids it (a pause rule is ignored for an OK) travels in full: the same result.
    queue = DeliveryQueue(redis, "pfx", 6_666)
    results = []
    for form, eid in (("d", "E1"), ("f", "E2")):
        redis.flushdb()
        redis.hset(f"pfx:event:{eid}:deliveries", "ta", '{"status":"pending"}')
        redis.zadd("pfx:due", {f"{eid}-ta": NOW + 90_000})
        redis.zadd("pfx:inflight:ta", {f"{eid}-ta": NOW + 90_000})
        redis.zadd("pfx:parked:ta", {"E9-ta": 1})
        redis.hset("pfx:target:ta", mapping={"state": "active", "failures": 2})
        record = Completion(f"{eid}-ta", "ta", eid, cap, attempt="the attempt", state="the state")
        record.health = HealthSignal.OK
        args = encode_completions("pfx", NOW, 6_666, [record])
        assert args[COMPLETION_HEAD_ARGS] == "d"
        if form == "f":  # the full form of the same record, built by hand
            args = [*args[:COMPLETION_HEAD_ARGS], "f", f"{eid}-ta", "ta", eid, cap, 0, 0]
            args += ["the attempt", "the state", "", "", "", "", "ok"]
        redis.evalsha(queue._complete.sha, 0, *args)
        dump = {
            "attempts": redis.lrange(f"pfx:event:{eid}:attempts", 0, -1),
            "ttls": (
                redis.ttl(f"pfx:event:{eid}:attempts") > 6_600,
                redis.ttl(f"pfx:event:{eid}:deliveries") > 6_600,
            ),
            "state": redis.hget(f"pfx:event:{eid}:deliveries", "ta"),
            "due": redis.zrange("pfx:due", 0, -1, withscores=True),
            "inflight": redis.zcard("pfx:inflight:ta"),
            "target": redis.hgetall("pfx:target:ta"),
            "dead": redis.zcard("pfx:dead"),
        }
        results.append(dump)
    assert results[0] == results[1]
    assert results[0]["attempts"] == [b"the attempt"] and results[0]["target"][b"failures"] == b"0"
    # the cap frees a slot: the parked one is due now (and E1's own delivery is done)
    assert results[0]["inflight"] == (0 if cap else 1)
    assert results[0]["due"] == ([(b"E9-ta", float(NOW))] if cap else [])


def test_one_call_of_many_records_for_one_target_and_event(redis: Redis) -> None:
    # complete.lua reads a target's health once per call while OKs follow OKs, and sets an
    # event's TTLs once: a failure in between is still counted, an OK after it still resets,
    # and a key first written by a later record still gets its TTL.
    queue = DeliveryQueue(redis, "pfx", 6_666)
    redis.hset("pfx:target:t", mapping={"state": "active", "failures": 3})
    for n in range(1, 6):  # the events' deliveries, as the ingest stores them (an erased one's are gone)
        redis.hset(f"pfx:event:E{n}:deliveries", mapping={"t": "pending", "u": "pending"})

    def ok(n: int) -> Completion:
        return Completion(f"E{n}-t", "t", f"E{n}", attempt=f"a{n}", state=f"s{n}", health=HealthSignal.OK)

    fail = Completion("E2-t", "t", "E2", attempt="a2", state="s2", due=NOW + 1, health=HealthSignal.FAIL)
    queue.complete(NOW, [ok(1), ok(1), fail])
    assert redis.hget("pfx:target:t", "failures") == b"1"  # reset by the first OK, then one failure
    queue.complete(NOW, [fail, ok(3), ok(4)])
    assert redis.hget("pfx:target:t", "failures") == b"0"  # the failure, then reset by the OK after it
    # The same event: its attempts key first appears with the second record, which sets its TTL.
    stateless = Completion("E5-t", "t", "E5", state="s5")
    queue.complete(NOW, [stateless, Completion("E5-u", "u", "E5", attempt="a5", state="s5u")])
    assert 6_600 < redis.ttl("pfx:event:E5:attempts") <= 6_666
    assert 6_600 < redis.ttl("pfx:event:E5:deliveries") <= 6_666
    assert redis.lrange("pfx:event:E1:attempts", 0, -1) == [b"a1", b"a1"]
    assert redis.hgetall("pfx:event:E5:deliveries") == {b"t": b"s5", b"u": b"s5u"}


def test_an_alert_is_an_event_the_ingest_script_stores_and_the_wake_flag_stays_its_callers(
    redis: Redis,
) -> None:
    queue = DeliveryQueue(redis, "pfx", 6_666)
    alert = make_alert("target x paused: because")
    queue.write_alert(alert, "ops")
    assert json.loads(redis.get(f"pfx:event:{alert.id}") or b"{}") == alert.to_dict()
    state = json.loads(redis.hget(f"pfx:event:{alert.id}:deliveries", "ops") or b"{}")
    assert (state["status"], state["updated_at"]) == ("pending", alert.received_at_ms)
    assert redis.zscore("pfx:due", f"{alert.id}-ops") == alert.received_at_ms
    assert redis.zscore("pfx:events", alert.id) == alert.received_at_ms
    assert not redis.exists("pfx:wake")
    assert queue.set_wake()  # so the CLI's and the API's `_wake` still queue a drain job


@pytest.mark.parametrize("as_bytes", [True, False])
def test_decode_reads_every_status_as_parse_status_does(as_bytes: bool) -> None:
    # The usual statuses are looked up as the reply holds them, the others parsed: the same results.
    from gateway.store.ingest import Hold, decode, parse_status

    answers = ["accepted", "exists", "duplicate:01AB", "duplicate:", "suppressed:limit:too many", "accepted"]
    held = ["held:net:why: so"]
    raw: list[object] = [b"7", b"1", *((a.encode() if as_bytes else a) for a in answers + held)]
    answer = decode(raw, len(answers))
    assert answer.version == 7 and answer.woke is True
    assert answer.results == [parse_status(a) for a in answers]
    assert answer.holds == [Hold.parse(h) for h in held]


@pytest.mark.parametrize("limits", [None, {}, {"sup": "why", "k": "allowlist"}])
@pytest.mark.parametrize("targets", [(), ("t1",), ("t1", "t2")])
def test_new_item_args_are_what_encode_writes_of_the_item(
    limits: dict[str, str] | None, targets: tuple[str, ...]
) -> None:
    # The accept step's items come encoded already: the same arguments as IngestItem.new's.
    from gateway.events import INVITATION_CREATED, make_event
    from gateway.store.ingest import HEAD_ARGS, IngestHead, IngestItem, encode, new_item_args

    fields = {"invitee": "+447700900123", "invitor": 'j"s', "network_id": "n"}
    event = make_event(fields, INVITATION_CREATED, "json", client="c")
    item = IngestItem.new(event, targets, "dk", limits, entry='[1,"e"', dedupe_ttl_ms=5, created_key="ck")
    encoded = new_item_args(event, targets, "dk", limits, entry='[1,"e"', dedupe_ttl_ms=5, created_key="ck")
    head = IngestHead("gw", 1, 2)
    assert encode(head, [encoded, item])[HEAD_ARGS:] == encode(head, [item, item])[HEAD_ARGS:]
