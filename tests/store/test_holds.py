"""The guard's holds against a real Redis: each start and end told once, across callers."""

from __future__ import annotations

from redis import Redis

from gateway.store.events import Store
from gateway.store.holds import HoldChange, Holds
from tests.seeding import hold_prefix


def test_a_hold_is_told_when_it_starts_and_when_its_time_runs_out(redis: Redis) -> None:
    store = Store(redis, prefix="gw")
    hold_prefix(store, "n", "t")
    holds, other = Holds(redis, "gw"), Holds(redis, "gw")  # two workers' tickers
    [hold] = holds.active(0)
    assert (hold.network, hold.prefix) == ("n", "8821")
    [(change, told)] = holds.news(hold.since_ms)
    assert change is HoldChange.HELD and told.id == hold.id
    assert other.news(hold.since_ms) == []  # told once
    assert holds.active(hold.ends_ms) == []  # no longer in force at its end ...
    [(change, ended)] = other.news(hold.ends_ms)  # ... and its end told once
    assert change is HoldChange.ENDED and ended.ended_ms == hold.ends_ms and ended.lifted_by is None
    assert holds.news(hold.ends_ms + 1) == [] and not redis.hgetall("gw:holds")


def test_a_lifted_hold_ends_at_once_and_is_told_once(redis: Redis) -> None:
    store = Store(redis, prefix="gw")
    hold_prefix(store, "n", "t")
    holds = Holds(redis, "gw")
    [hold] = holds.active(0)
    now = hold.since_ms + 1000
    lifted = holds.lift(hold.id, now, "by hand")
    assert lifted is not None and lifted.lifted_by == "by hand" and lifted.ended_ms == now
    assert holds.lift(hold.id, now, "by hand") is None
    assert not redis.exists(f"gw:hold:{hold.id}")  # the prefix takes invitations again
    assert [c for c, _ in holds.news(now)] == [HoldChange.HELD, HoldChange.ENDED]
    assert holds.get(hold.id, now) is None and holds.lift("nothex", now, "x") is None
