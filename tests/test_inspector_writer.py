"""The callbacks inspector's writer of rejected callbacks: bounded whatever comes (a flood, Redis
away), counting what it drops, and emptying its queue into the real Redis once it answers."""

from __future__ import annotations

import asyncio
import json

from redis import Redis

from gateway.embedded import free_port
from gateway.fastredis import FastRedis
from gateway.ingest.inspector import DROPPED, CallbackWriter
from gateway.metrics import Tally
from gateway.store.callbacks import CallbackList, Kept
from gateway.store.keys import Keys


def test_a_flood_is_bounded_and_counted_and_written_once_redis_answers(redis_url: str, redis: Redis) -> None:
    async def go() -> None:
        tally = Tally()
        away = FastRedis(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)  # nothing listens
        writer = CallbackWriter(away, "pfx", Kept(count=5, window_ms=60_000), tally)
        n = CallbackWriter.MAX_QUEUED + 500
        for i in range(n):
            writer.submit(CallbackList.REJECTED, "net", json.dumps([1_800_000_000_000 + i, f"e{i}"]))
        assert writer.queued == CallbackWriter.MAX_QUEUED and tally.data[DROPPED] == 500
        # Redis away: the batch goes back to the queue, which stays within its bound.
        await writer.flush(timeout=1.0)
        assert writer.queued == CallbackWriter.MAX_QUEUED and tally.data[DROPPED] == 500
        await away.aclose()
        # Redis answers: the queue empties, the list keeps its newest 5.
        writer.client = FastRedis(redis_url)
        try:
            while writer.queued:
                await writer.flush()
        finally:
            await writer.client.aclose()
        kept = [json.loads(e)[1] for e in redis.lrange(Keys("pfx").callbacks_rejected("net"), 0, -1)]
        assert kept == [
            f"e{i}" for i in range(CallbackWriter.MAX_QUEUED - 1, CallbackWriter.MAX_QUEUED - 6, -1)
        ]

    asyncio.run(go())
