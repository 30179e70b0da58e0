"""Erasure in the store (gateway/store/erasure.py) against the test's real Redis: which events are
found, what goes with them, what a network scope leaves alone, and a completion that comes after
an erasure writes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis import Redis

from gateway.config.load import config_from_dict
from gateway.events import INVITATION_ACCEPTED, INVITATION_CREATED, InvitationEvent, make_event
from gateway.store.erasure import Erasure, Number, erase, find_events, indexed_numbers, phone_digits
from gateway.store.ingest import IngestHead, IngestItem, dedupe_key, ingest_sync, number_limit_keys
from gateway.store.keys import Keys
from gateway.store.queue import Completion, DeliveryQueue

P = "pfx"
NOW = 1_800_000_000_000
CONFIG = config_from_dict(
    {
        "targets": [{"name": "crm", "networks": ["*"], "url": "https://crm.example.com/x"}],
        "networks": {"n1": {"limits": [{"per": "invitee", "max": 5, "window": "1d"}], "cooldown": "1h"}},
    }
)


def event(
    invitee: str,
    network: str = "n1",
    kind: str = INVITATION_CREATED,
    invitor: str = "jon",
    region: str | None = None,
) -> InvitationEvent:
    fields = {"invitee": invitee, "invitor": invitor, "network_id": network}
    return make_event(fields, kind, "query", now=NOW / 1000, region_of=lambda network: region)


def store(redis: Redis, *events: InvitationEvent) -> None:
    head = IngestHead(P, NOW, 86_400, 600_000, wake_ttl=0)
    ingest_sync(redis, head, [IngestItem.new(e, ["crm"], dedupe_key(e)) for e in events])


def job(redis: Redis, number: str, networks: frozenset[str] | None = None) -> Erasure:
    return Erasure(redis, Keys(P), Number.parse(number), networks, CONFIG, NOW)


def test_a_number_in_any_spelling() -> None:
    assert Number.parse(" +44 (7700) 900-123 ").digits == {"447700900123"}
    assert Number.parse("447700900123").stored_spellings == {"447700900123", "+447700900123"}
    for bad in ("", "12", "+44 7700 900123 ext 5", "a123456", "1" * 21):
        with pytest.raises(ValueError):
            Number.parse(bad)
    assert Number.parse("+447700900123").held_by("https://x/?to=%2B44%207700%20900123")
    assert not Number.parse("+447700900123").held_by("+44 7700 900124")
    assert phone_digits("+44 7700 900123") == "447700900123"
    assert phone_digits("johnsnow") is None and phone_digits("jon5551234") is None
    assert indexed_numbers(event("+447700900123", invitor="+1 555 000 1111")) == [
        "447700900123",
        "15550001111",
    ]
    # A national number is read in the regions given (the networks' default_region): both kept.
    national = Number.parse("07700 900123", ["GB", None])
    assert national.digits == {"07700900123", "447700900123"}
    assert Number.parse("07700 900123").digits == {"07700900123"}  # no region: as given
    assert (
        national.digest() == Number.parse("+44 7700 900123").digest() == Number.parse("447700900123").digest()
    )


def test_events_are_found_by_invitee_or_invitor_in_any_spelling_and_only_in_scope(redis: Redis) -> None:
    mine = [
        event("+447700900123"),
        event("447700900123", "n2"),
        event("+15550001111", invitor="+44 7700 900123"),
        event("+447700900123", kind=INVITATION_ACCEPTED),
        event("07700 900123", "n3", region="GB"),  # national, made E.164 by the network's region
    ]
    others = [event("+447700900124"), event("+4477009001234"), event("+15550001111", invitor="447700900")]
    store(redis, *mine, *others)
    assert set(find_events(job(redis, "+44 7700 900123"))) == {e.id for e in mine}
    assert set(find_events(job(redis, "+447700900123", frozenset({"n2"})))) == {mine[1].id}
    assert find_events(job(redis, "+447700900123", frozenset({"n4"}))) == []


def test_an_event_goes_with_all_of_its_own_and_the_rest_stays(redis: Redis) -> None:
    mine, other = event("+447700900123"), event("+15550001111")
    store(redis, mine, other)
    did = f"{mine.id}-crm"
    # A delivery in every place one can wait or be remembered.
    for key in ("dead", "suppressed"):
        redis.zadd(f"{P}:{key}", {did: NOW})
    redis.zadd(f"{P}:parked:crm", {did: NOW})
    redis.zadd(f"{P}:inflight:crm", {did: NOW})
    redis.hset(f"{P}:reserved", did, NOW)
    redis.hset(f"{P}:probes", did, NOW)
    redis.rpush(f"{P}:event:{mine.id}:attempts", "{}")
    redis.set(f"{P}:dedupe:{dedupe_key(mine, INVITATION_ACCEPTED)}", "X")
    limits = number_limit_keys(["447700900123"], [], "n1", CONFIG.network_policy("n1"))
    for k in limits:
        redis.set(f"{P}:{k}", 1)
    before = {k for k in redis.keys("*")}

    counts = erase(job(redis, "447700900123"))
    assert counts["events"] == {"events": 1, "deliveries_cancelled": 1, "dead_letters": 1, "keys": 5}
    assert counts["limits"]["keys"] == len(limits) == 2  # the limit's log and the cooldown
    gone = {k.decode() for k in before - set(redis.keys("*"))}
    assert gone == {
        f"{P}:event:{mine.id}",
        f"{P}:event:{mine.id}:deliveries",
        f"{P}:event:{mine.id}:attempts",
        f"{P}:dedupe:{dedupe_key(mine)}",
        f"{P}:dedupe:{dedupe_key(mine, INVITATION_ACCEPTED)}",
        *(f"{P}:{k}" for k in limits),
        f"{P}:parked:crm",
        f"{P}:inflight:crm",
        f"{P}:reserved",
        f"{P}:probes",
        f"{P}:suppressed",
        f"{P}:dead",
    }
    for index in (f"{P}:events", f"{P}:events:net:n1", f"{P}:due"):
        assert [m.decode().split("-")[0] for m in redis.zrange(index, 0, -1)] == [other.id]


def test_a_completion_after_the_erasure_writes_nothing(redis: Redis) -> None:
    mine = event("+447700900123")
    store(redis, mine)
    did = f"{mine.id}-crm"
    redis.zadd(f"{P}:due", {did: NOW + 90_000})  # claimed: leased
    erase(job(redis, "+447700900123"))
    state = json.dumps({"status": "retrying"})
    record = Completion(did, "crm", mine.id, attempt='{"a":1}', state=state, due=NOW + 5000, dead=True)
    DeliveryQueue(redis, P, 86_400).complete(NOW, [record])
    assert redis.keys(f"{P}:event:*") == []
    assert redis.zcard(f"{P}:due") == 0 and redis.zcard(f"{P}:dead") == 0


def test_lookups_filed_under_a_number_go_in_its_networks_only(redis: Redis) -> None:
    from gateway.store.erasure import index_lookup

    keys = Keys(P)
    for network, cache in (("n1", "pfx:lookup:aaa"), ("n2", "pfx:lookup:bbb")):
        redis.set(cache, '{"lookup.email": "a@example.com"}')
        with redis.pipeline() as pipe:
            index_lookup(pipe, keys, event("+447700900123", network), cache, 3600)
            pipe.execute()
    counts: dict[str, Any] = erase(job(redis, "+447700900123", frozenset({"n1"})))
    assert counts["lookups"]["keys"] == 1
    assert not redis.exists("pfx:lookup:aaa") and redis.exists("pfx:lookup:bbb")
    counts = erase(job(redis, "+447700900123"))
    assert counts["lookups"]["keys"] == 2  # the answer and the index, now empty
    assert redis.keys("pfx:lookup*") == []
