"""The ingest script's duplicate path: told before its event is written (nothing of a duplicate is
stored, then deleted), and never confused with an event stored before (a spool drain's)."""

from __future__ import annotations

from redis import Redis

from gateway.store.ingest import AcceptResult, AcceptStatus, IngestHead, IngestItem, ItemKind, ingest_sync

NOW = 1_800_000_000_000
WINDOW_MS = 600_000


def _head() -> IngestHead:
    return IngestHead("pfx", NOW, 3600, WINDOW_MS)


def _item(event_id: str, received: int = NOW - 1000) -> IngestItem:
    event = '{"id":"' + event_id + '"}'
    return IngestItem(ItemKind.NEW, event_id, event, "net", received, ["t"], "dk")


def test_a_duplicate_writes_nothing_of_its_event(redis: Redis) -> None:
    assert ingest_sync(redis, _head(), [_item("01FIRST")]).results[0].status is AcceptStatus.ACCEPTED
    redis.config_resetstat()
    answer = ingest_sync(redis, _head(), [_item("01AGAIN")])
    assert answer.results == [AcceptResult(AcceptStatus.DUPLICATE, duplicate_of="01FIRST")]
    stats = redis.info("commandstats")
    # the dedupe key's SET NX (refused) and GET, the event's EXISTS, the counter: no write of the
    # event, no DEL of it
    assert stats["cmdstat_set"]["calls"] == 1 and "cmdstat_del" not in stats
    assert not redis.exists("pfx:event:01AGAIN") and redis.hget("pfx:counters", "duplicates") == b"1"


def test_an_event_stored_before_is_completed_even_when_another_took_its_invitation(redis: Redis) -> None:
    # 01OLD stored; its dedupe key gone (expired); 01NEW, the same invitation, takes it
    assert ingest_sync(redis, _head(), [_item("01OLD")]).results[0].status is AcceptStatus.ACCEPTED
    redis.delete("pfx:dedupe:dk", "pfx:event:01OLD:deliveries")  # (a run cut short: no deliveries)
    assert ingest_sync(redis, _head(), [_item("01NEW")]).results[0].status is AcceptStatus.ACCEPTED
    # 01OLD again (a spool drain): stored before, so completed, not a duplicate of 01NEW
    answer = ingest_sync(redis, _head(), [_item("01OLD")])
    assert answer.results[0].status is AcceptStatus.EXISTS
    assert redis.hexists("pfx:event:01OLD:deliveries", "t") and redis.exists("pfx:event:01OLD")
    assert redis.get("pfx:dedupe:dk") == b"01NEW" and redis.hget("pfx:counters", "duplicates") is None
