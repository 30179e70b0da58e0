"""The callbacks inspector's lists in the test's real Redis: the writer's script and the ingest
script keep the newest N of a list and nothing past the window; one-time test tokens are taken once."""

from __future__ import annotations

import asyncio
import json

from redis import Redis

from gateway.fastredis import FastRedis
from gateway.store.callbacks import (
    CallbackList,
    Kept,
    encode_write,
    networks_with_lists,
    put_test_token,
    take_test_token,
    write,
)
from gateway.store.ingest import IngestHead, IngestItem, ItemKind, ingest_sync
from gateway.store.keys import Keys

NOW = 1_800_000_000_000
KEYS = Keys("pfx")


def _entry(at: int, n: int) -> str:
    return json.dumps([at, n])


def _run(
    redis_url: str, kept: Kept, groups: dict[tuple[CallbackList, str], list[str]], now: int = NOW
) -> None:
    async def go() -> None:
        client = FastRedis(redis_url)
        try:
            await write(client, "pfx", now, kept, groups)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_the_writer_keeps_the_newest_n_of_each_list(redis_url: str, redis: Redis) -> None:
    kept = Kept(count=5, window_ms=60_000)
    # 5 + 3 entries in two calls: the 5 newest stay, newest first.
    _run(redis_url, kept, {(CallbackList.REJECTED, "net-a"): [_entry(NOW, i) for i in range(5)]})
    _run(
        redis_url,
        kept,
        {
            (CallbackList.REJECTED, "net-a"): [_entry(NOW, i) for i in range(5, 8)],
            (CallbackList.UNROUTABLE, ""): [_entry(NOW, 100)],
            (CallbackList.TAKEN, "net-b"): [_entry(NOW, 200)],
        },
    )
    assert [json.loads(e)[1] for e in redis.lrange(KEYS.callbacks_rejected("net-a"), 0, -1)] == [
        7,
        6,
        5,
        4,
        3,
    ]
    assert [json.loads(e)[1] for e in redis.lrange(KEYS.callbacks_unroutable, 0, -1)] == [100]
    assert [json.loads(e)[1] for e in redis.lrange(KEYS.callbacks("net-b"), 0, -1)] == [200]
    assert 55_000 < redis.pttl(KEYS.callbacks("net-b")) <= 60_000
    # The unroutable list names no network.
    assert networks_with_lists(redis, KEYS) == ["net-a", "net-b"]
    # A network whose lists are gone (expired) is forgotten.
    redis.delete(KEYS.callbacks("net-b"))
    assert networks_with_lists(redis, KEYS) == ["net-a"]
    assert redis.zrange(KEYS.callbacks_networks, 0, -1) == [b"net-a"]


def test_entries_past_the_window_go_at_the_next_push(redis_url: str, redis: Redis) -> None:
    kept = Kept(count=100, window_ms=60_000)
    pushes = {(CallbackList.REJECTED, "n"): [_entry(NOW - 95_000, 1), _entry(NOW - 70_000, 2)]}
    _run(redis_url, kept, pushes, now=NOW - 60_000)
    assert redis.llen(KEYS.callbacks_rejected("n")) == 2
    _run(redis_url, kept, {(CallbackList.REJECTED, "n"): [_entry(NOW - 30_000, 3)]}, now=NOW - 30_000)
    # Pushed at NOW - 30 s with a 60 s window: the entry of NOW - 95 s is gone, NOW - 70 s kept.
    assert [json.loads(e)[1] for e in redis.lrange(KEYS.callbacks_rejected("n"), 0, -1)] == [3, 2]
    _run(redis_url, kept, {(CallbackList.REJECTED, "n"): [_entry(NOW, 4)]})
    assert [json.loads(e)[1] for e in redis.lrange(KEYS.callbacks_rejected("n"), 0, -1)] == [4, 3]


def test_the_ingest_script_caps_each_network_list_in_the_accept_call(redis: Redis) -> None:
    head = IngestHead("pfx", NOW, 3600, callbacks_kept=3, callbacks_ms=60_000)
    items = [IngestItem(ItemKind.NEW, f"01E{i}", "{}", "net", NOW, [], entry=f"[{NOW},{i}") for i in range(5)]
    answer = ingest_sync(redis, head, items)
    assert len(answer.results) == 5
    kept = [json.loads(e) for e in redis.lrange(KEYS.callbacks("net"), 0, -1)]
    assert kept == [[NOW, 4, "accepted"], [NOW, 3, "accepted"], [NOW, 2, "accepted"]]
    # Off (a cap of 0), or an item without an entry: nothing pushed.
    redis.delete(KEYS.callbacks("net"))
    ingest_sync(
        redis,
        IngestHead("pfx", NOW, 3600),
        [IngestItem(ItemKind.NEW, "01X", "{}", "net", NOW, [], entry="[")],
    )
    ingest_sync(redis, head, [IngestItem(ItemKind.NEW, "01Y", "{}", "net", NOW, [])])
    assert not redis.exists(KEYS.callbacks("net"))


def test_the_layout_of_the_writer_is_counted() -> None:
    args = encode_write(
        "pfx", NOW, Kept(7, 9), {(CallbackList.TAKEN, "a"): ["x", "y"], (CallbackList.UNROUTABLE, ""): ["z"]}
    )
    assert args == ["pfx", NOW, 7, 9, "n", "a", 2, "x", "y", "u", "", 1, "z"]


def test_a_test_token_is_taken_once(redis_url: str, redis: Redis) -> None:
    put_test_token(redis, KEYS, "d1", '{"network": "n", "test_id": "t"}', seconds=30)
    assert 25 < redis.ttl(KEYS.callbacks_test("d1")) <= 30

    async def go() -> list[str | None]:
        client = FastRedis(redis_url)
        try:
            return [await take_test_token(client, "pfx", "d1"), await take_test_token(client, "pfx", "d1")]
        finally:
            await client.aclose()

    assert asyncio.run(go()) == ['{"network": "n", "test_id": "t"}', None]
